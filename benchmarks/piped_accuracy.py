"""Accuracy and speed on the 8 PIPED paper types: untrained ISTA vs trained LISTA.

For each type: train on train/good, test on test/ (scikit-learn's roc_auc_score on the raw
maps and image scores), training time, and `detect` end to end (read, model, write all
outputs) in images/s. Prints a table and writes JSON.

    python benchmarks/piped_accuracy.py [--data ../shared/data/piped] [--json out.json]
    python benchmarks/piped_accuracy.py --data ../shared/data/brick --json benchmarks/results/brick.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from lista_cli.checkpoint import load_checkpoint
from lista_cli.config import load_config
from lista_cli.detect import detect
from lista_cli.evaluate import score_dataset
from lista_cli.inputs import collect_inputs
from lista_cli.train import train

MODELS = {
    "ISTA (untrained, 100 it.)": ["model.learn=false", "model.layers=100"],
    "LISTA full (trained, K=10)": ["model.layer=full"],
    "LISTA-CP (trained, K=10, default)": [],
}


def run_type(folder: Path, overrides: list[str], work: Path) -> dict:
    cfg = load_config(None, overrides)
    model_path = work / "model.pt"
    started = time.perf_counter()
    summary = train(folder, cfg, model_path)
    train_seconds = time.perf_counter() - started
    detector = load_checkpoint(model_path)
    items, scores, maps, masks = score_dataset(detector, folder)
    labels = np.array([item.is_anomalous for item in items])
    pixel = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    image = roc_auc_score(labels, scores)
    inputs = collect_inputs([str(folder / "test")]).images
    result = detect(detector, inputs, work / "out")
    return {
        "pixel_auroc": float(pixel),
        "image_auroc": float(image),
        "train_seconds": train_seconds,
        "rank": summary.rank,
        "best_step": summary.best_step,
        "detect_images_per_second": result.processed / result.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "piped")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/piped_accuracy.json"))
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    # A folder of categories (piped/) or one category folder (brick/).
    if (args.data / "train" / "good").is_dir():
        types = [args.data]
    else:
        types = sorted(p for p in args.data.iterdir() if (p / "train" / "good").is_dir())
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for folder in types:
            results[folder.name] = {}
            for name, overrides in MODELS.items():
                row = run_type(folder, overrides, Path(tmp))
                results[folder.name][name] = row
                print(
                    f"{folder.name:12s} {name:26s} pixel {row['pixel_auroc']:.3f} image {row['image_auroc']:.3f} "
                    f"train {row['train_seconds']:5.1f}s detect {row['detect_images_per_second']:5.1f} img/s",
                    file=sys.stderr,
                    flush=True,
                )
    header = (
        "| type | " + " | ".join(f"{m} pixel / image AUROC" for m in MODELS) + " | LISTA train s | LISTA detect img/s |"
    )
    print(header)
    print("|" + "---|" * (len(MODELS) + 3))
    for type_name, rows in results.items():
        cells = [f"{rows[m]['pixel_auroc']:.3f} / {rows[m]['image_auroc']:.3f}" for m in MODELS]
        last = rows[list(MODELS)[-1]]
        print(
            f"| {type_name} | "
            + " | ".join(cells)
            + f" | {last['train_seconds']:.1f} | {last['detect_images_per_second']:.1f} |"
        )
    means = {
        m: (
            np.mean([r[m]["pixel_auroc"] for r in results.values()]),
            np.mean([r[m]["image_auroc"] for r in results.values()]),
        )
        for m in MODELS
    }
    last = list(MODELS)[-1]
    print(
        "| **mean** | "
        + " | ".join(f"**{p:.3f} / {i:.3f}**" for p, i in means.values())
        + f" | {np.mean([r[last]['train_seconds'] for r in results.values()]):.1f}"
        + f" | {np.mean([r[last]['detect_images_per_second'] for r in results.values()]):.1f} |"
    )
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    print(f"\nmachine: {machine}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
