"""Accuracy per dataset and defect kind: background models, multi-scale, trained vs untrained.

For every dataset folder (each PIPED paper type and brick) and every variant below, trains on
train/good twice, with the unfolded layers learned (the variant as configured) and untrained
(model.learn=false: the same network as classical ISTA, K = 10), evaluates on test/ (pixel and
image AUROC overall and per defect kind) and times training and `detect` end to end (read,
model, write all outputs). Prints markdown tables and writes JSON.

    python benchmarks/accuracy.py                      # ../shared/data/piped/* and ../shared/data/brick
    python benchmarks/accuracy.py --data ../shared/data/brick --variants global image
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

from lista_cli.checkpoint import load_checkpoint
from lista_cli.config import load_config
from lista_cli.detect import detect
from lista_cli.evaluate import evaluate
from lista_cli.inputs import collect_inputs
from lista_cli.train import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VARIANTS = {
    "global, S only": ["score.bank_size=0", "data.scales=[1]"],  # the model of the first release
    "global": ["data.scales=[1]"],
    "global, scales 1+2": ["data.scales=[1,2]"],  # the default
    "image": ["model.background=image", "data.scales=[1]"],
    "both": ["model.background=both", "data.scales=[1]"],
}


def run(folder: Path, overrides: list[str], work: Path) -> dict:
    cfg = load_config(None, overrides)
    model_path = work / "model.pt"
    started = time.perf_counter()
    summary = train(folder, cfg, model_path)
    train_seconds = time.perf_counter() - started
    detector = load_checkpoint(model_path)
    report = evaluate(detector, folder)
    inputs = collect_inputs([str(folder / "test")]).images
    result = detect(detector, inputs, work / "out")
    return {
        "pixel_auroc": report["pixel_auroc"],
        "image_auroc": report["image_auroc"],
        "kinds": {
            k: {"pixel_auroc": v["pixel_auroc"], "image_auroc": v["image_auroc"]} for k, v in report["kinds"].items()
        },
        "train_seconds": train_seconds,
        "best_steps": [s["best_step"] for s in summary.scales],
        "sparse_share": summary.sparse_share,
        "detect_images_per_second": result.processed / result.seconds,
    }


def datasets(paths: list[Path]) -> list[Path]:
    """Category folders (with train/good) given directly or as children of a folder."""
    found = []
    for path in paths:
        if (path / "train" / "good").is_dir():
            found.append(path)
        else:
            found.extend(sorted(p for p in path.iterdir() if (p / "train" / "good").is_dir()))
    return found


def pair(row: dict) -> str:
    return f"{row['pixel_auroc']:.3f} / {row['image_auroc']:.3f}"


def dataset_table(results: dict, variants: list[str], title: str, cell) -> None:
    """A markdown table, a row per dataset, a column per variant: cell(trained, untrained)."""
    print(f"\n### {title}\n")
    print("| dataset | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for dataset, rows in results.items():
        cells = [cell(rows[f"{v} | trained"], rows[f"{v} | untrained"]) for v in variants]
        print(f"| {dataset} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=[SHARED / "piped", SHARED / "brick"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/accuracy.json"))
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for folder in datasets(args.data):
            results[folder.name] = {}
            for name in args.variants:
                for learned in (True, False):
                    overrides = VARIANTS[name] + ([] if learned else ["model.learn=false"])
                    row = run(folder, overrides, Path(tmp))
                    results[folder.name][f"{name} | {'trained' if learned else 'untrained'}"] = row
                    print(
                        f"{folder.name:12s} {name:20s} {'trained' if learned else 'untrained':9s} {pair(row)}"
                        f" train {row['train_seconds']:5.1f}s detect {row['detect_images_per_second']:5.1f} img/s"
                        f" kept {row['best_steps']} share {row['sparse_share']:g}",
                        file=sys.stderr,
                        flush=True,
                    )

    print("### Pixel / image AUROC, trained (untrained)\n")
    print("| dataset | " + " | ".join(args.variants) + " |")
    print("|---|" + "---|" * len(args.variants))
    for dataset, rows in results.items():
        cells = [f"{pair(rows[f'{v} | trained'])} ({pair(rows[f'{v} | untrained'])})" for v in args.variants]
        print(f"| {dataset} | " + " | ".join(cells) + " |")
    piped = [d for d in results if d.startswith("PA_")]
    if piped:
        cells = []
        for v in args.variants:
            means = [
                np.mean([results[d][f"{v} | {state}"][metric] for d in piped])
                for state in ("trained", "untrained")
                for metric in ("pixel_auroc", "image_auroc")
            ]
            cells.append(f"**{means[0]:.3f} / {means[1]:.3f}** ({means[2]:.3f} / {means[3]:.3f})")
        print(f"| **PIPED mean ({len(piped)})** | " + " | ".join(cells) + " |")

    def gain(trained: dict, untrained: dict) -> str:
        return f"{trained['pixel_auroc'] - untrained['pixel_auroc']:+.3f}"

    def share(trained: dict, untrained: dict) -> str:
        return f"{trained.get('sparse_share', 1.0):g} ({untrained.get('sparse_share', 1.0):g})"

    def timing(trained: dict, untrained: dict) -> str:
        return f"{trained['train_seconds']:.1f} / {trained['detect_images_per_second']:.0f}"

    dataset_table(results, args.variants, "Trained pixel AUROC minus untrained (negative: training hurt)", gain)
    for dataset, rows in results.items():
        kinds = list(next(iter(rows.values()))["kinds"])
        if len(kinds) < 2:
            continue
        print(f"\n### {dataset}: pixel / image AUROC per defect kind, trained (untrained)\n")
        print("| variant | " + " | ".join(kinds) + " |")
        print("|---|" + "---|" * len(kinds))
        for v in args.variants:
            trained, untrained = rows[f"{v} | trained"], rows[f"{v} | untrained"]
            cells = [f"{pair(trained['kinds'][k])} ({pair(untrained['kinds'][k])})" for k in kinds]
            print(f"| {v} | " + " | ".join(cells) + " |")

    dataset_table(results, args.variants, "Sparse share chosen on validation, trained (untrained)", share)
    dataset_table(results, args.variants, "Time: training s / detect img/s (end to end), trained models", timing)

    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    print(f"\nmachine: {machine}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
