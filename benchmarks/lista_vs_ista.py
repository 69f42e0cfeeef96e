"""LISTA (trained, K layers) against ISTA and FISTA (K iterations), same lambda and subspace.

For each paper type: pixel AUROC on the real test set, NMSE (dB) of S against the exact
CutPaste target on synthetic defects pasted into the type's test/good images (never seen
in training), and model time per image. Reports how many ISTA / FISTA iterations reach the
pixel AUROC of LISTA with K = 10.

    python benchmarks/lista_vs_ista.py [--types PA_GLA01_TL,PA_BTN01_RL,...]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lista_cli.config import load_config
from lista_cli.detection.evaluation.evaluate import score_dataset
from lista_cli.detection.evaluation.metrics import roc_auc
from lista_cli.detection.model import patches
from lista_cli.detection.scoring.checkpoint import load_checkpoint
from lista_cli.detection.training.cutpaste import cutpaste
from lista_cli.detection.training.train import train
from lista_cli.io.imageio import read_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "piped"
LAYERS = [1, 2, 5, 10, 20]
ITERATIONS = [10, 30, 100, 300, 1000]


def synthetic_defects(detector, folder: Path, copies: int = 3):
    """(images x~, exact targets S*) from test/good with seeded CutPaste defects."""
    rng = torch.Generator().manual_seed(123)
    clean = [detector.prepare(read_image(p)) for p in sorted((folder / "test" / "good").glob("*.png"))]
    augmented, targets = [], []
    p, stride = detector.config.patch.size, detector.config.patch.stride
    for image in clean:
        for _ in range(copies):
            x_tilde, _ = cutpaste(image, rng, detector.config.cutpaste)
            augmented.append(x_tilde)
            targets.append(patches.unfold(x_tilde[None], p, stride)[0] - patches.unfold(image[None], p, stride)[0])
    return augmented, targets


@torch.inference_mode()
def measure(detector, folder: Path, synthetic) -> dict:
    items, scores, maps, masks, _, _ = score_dataset(detector, folder)
    pixel = roc_auc(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    error = signal = 0.0
    started = time.perf_counter()
    for image, target in zip(*synthetic, strict=True):
        cfg = detector.config.patch
        sparse = detector.model(patches.unfold(image[None], cfg.size, cfg.stride))[0]
        error += float((sparse - target).pow(2).sum())
        signal += float(target.pow(2).sum())
    seconds = (time.perf_counter() - started) / len(synthetic[0])
    return {"pixel_auroc": pixel, "nmse_db": 10 * math.log10(error / signal), "ms_per_image": 1000 * seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="PA_GLA01_TL,PA_BTN01_RL,PA_BRG01_RL")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/lista_vs_ista.json"))
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.types.split(","):
            folder = DATA / name
            rows = {}
            base = Path(tmp) / "base.pt"
            train(folder, load_config(None, ["model.learn=false", "score.bank_size=0", "data.scales=[1]"]), base)
            synthetic = synthetic_defects(load_checkpoint(base), folder)
            for k in LAYERS:
                path = Path(tmp) / f"lista{k}.pt"
                train(folder, load_config(None, [f"model.layers={k}", "score.bank_size=0", "data.scales=[1]"]), path)
                rows[f"LISTA-CP K={k}"] = measure(load_checkpoint(path), folder, synthetic)
                print(name, f"LISTA-CP K={k}", rows[f"LISTA-CP K={k}"], flush=True)
            for label, fista in (("ISTA", False), ("FISTA", True)):
                for n in ITERATIONS:
                    detector = load_checkpoint(base)
                    detector.model.layers = n
                    detector.model.log_theta = torch.nn.Parameter(detector.model.log_theta[:1].expand(n).clone())
                    detector.model.fista = fista
                    rows[f"{label} {n} it."] = measure(detector, folder, synthetic)
                    print(name, f"{label} {n} it.", rows[f"{label} {n} it."], flush=True)
            results[name] = rows
    print("\n| method | " + " | ".join(f"{t} pixel AUROC / NMSE dB / ms" for t in results) + " |")
    print("|---|" + "---|" * len(results))
    for method in next(iter(results.values())):
        cells = [
            f"{r[method]['pixel_auroc']:.3f} / {r[method]['nmse_db']:.1f} / {r[method]['ms_per_image']:.0f}"
            for r in results.values()
        ]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print()
    for name, rows in results.items():
        goal = rows["LISTA-CP K=10"]["pixel_auroc"]
        for label in ("ISTA", "FISTA"):
            reached = [n for n in ITERATIONS if rows[f"{label} {n} it."]["pixel_auroc"] >= goal]
            verdict = (
                f"{reached[0]} iterations ({reached[0] / 10:.0f}x)" if reached else f"not reached in {ITERATIONS[-1]}"
            )
            print(f"- {name}: {label} reaches LISTA-CP K=10's pixel AUROC {goal:.3f} after {verdict}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
