"""A folder of real crops of mixed sizes: train, eval and detect on it, never an internal error.

Cuts crops at random sizes and aspect ratios (seeded) from the real images of a dev set under
../shared/data (kolektor, bsdata/ballscrew), as crops cut around parts are on an inspection
line: training crops from train/good, test crops from test/good and from the defect images
(each defect crop holds defect pixels; its mask is cut with it). The crops live in a
temporary folder only (the sets' licences forbid copying them into the project). Prints per
set the crop sizes, the images training skipped, the working size, pixel / image AUROC, and
the detect run's failures and whether every map has its image's height x width.

    python benchmarks/mixed_sizes.py                       # kolektor and ballscrew
    python benchmarks/mixed_sizes.py --sets kolektor --seed 1
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED  # noqa: E402

SETS = {"kolektor": SHARED / "kolektor", "ballscrew": SHARED / "bsdata" / "ballscrew"}


def crop_box(rng: np.random.Generator, height: int, width: int, mask: np.ndarray | None = None):
    """A random (top, left, h, w) box: sides 5-100 % of the image's shorter side, aspect up to 1:4;
    with a mask, centred near a random defect pixel."""
    short = min(height, width)
    side = int(rng.uniform(0.05, 1.0) * short)
    aspect = float(np.exp(rng.uniform(-np.log(4), np.log(4))))
    h = int(np.clip(side * aspect**0.5, 4, height))
    w = int(np.clip(side / aspect**0.5, 4, width))
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        pick = rng.integers(len(ys))
        top = int(np.clip(ys[pick] - h // 2, 0, height - h))
        left = int(np.clip(xs[pick] - w // 2, 0, width - w))
    else:
        top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
    return top, left, h, w


def make_crops(source: Path, target: Path, rng: np.random.Generator, per_image: int = 2) -> list[tuple[int, int]]:
    """The MVTec layout of `source` as random crops in `target`; -> every crop's (h, w)."""
    shapes = []
    for folder in sorted((source / "train").iterdir()) + sorted((source / "test").iterdir()):
        split, kind = folder.parent.name, folder.name
        (target / split / kind).mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("*.*")):
            image = np.array(Image.open(path))
            mask = None
            if kind != "good":
                mask = np.array(Image.open(source / "ground_truth" / kind / f"{path.stem}_mask.png").convert("L")) > 127
                (target / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            for i in range(per_image if split == "train" else 1):
                top, left, h, w = crop_box(rng, *image.shape[:2], mask)
                name = f"{path.stem}_{i}"
                Image.fromarray(image[top : top + h, left : left + w]).save(target / split / kind / f"{name}.png")
                if mask is not None:
                    cut = (mask[top : top + h, left : left + w] * 255).astype(np.uint8)
                    Image.fromarray(cut).save(target / "ground_truth" / kind / f"{name}_mask.png")
                shapes.append((h, w))
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from lista_cli.config import load_config
    from lista_cli.detection.evaluation.evaluate import evaluate
    from lista_cli.detection.scoring.checkpoint import load_checkpoint
    from lista_cli.detection.training.train import train
    from lista_cli.io.batch import detect
    from lista_cli.io.inputs import collect_inputs

    rows = []
    for name in args.sets:
        rng = np.random.default_rng(args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / name
            shapes = np.array(make_crops(SETS[name], data, rng))
            warnings: list[str] = []
            summary = train(data, load_config(None, []), Path(tmp) / "m.pt", warn=warnings.append)
            detector = load_checkpoint(Path(tmp) / "m.pt")
            report = evaluate(detector, data)
            inputs = collect_inputs([str(data / "test")]).images
            result = detect(detector, inputs, Path(tmp) / "out")
            out = Path(tmp) / "out"
            with (out / "scores.csv").open() as handle:
                scored = list(csv.DictReader(handle))
            sizes_match = all(
                np.load(out / row["map"]).shape == np.array(Image.open(row["image"])).shape[:2] for row in scored
            )
            rows.append(
                f"| {name} | {len(shapes)} | {shapes.min()}–{shapes.max()} px | {len(summary.skipped)} |"
                f" {summary.image_size} | {report['pixel_auroc']:.3f} | {report['image_auroc']:.3f} |"
                f" {result.processed} scored, {len(result.failures)} failed | {'yes' if sizes_match else 'no'} |"
            )
    header = ["set", "crops", "sides", "skipped in training", "working size", "pixel AUROC", "image AUROC", "detect"]
    print("| " + " | ".join([*header, "maps at image size"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
