"""Exported models against their checkpoints on every dev set: maps, scores, decisions, speed.

For each category under ../shared/data (or the folders given): train the default config,
`lista export` it, score every test image with the checkpoint (PyTorch) and with the ONNX
file (ONNX Runtime), and print the largest map difference in units of the image threshold,
the largest relative score difference, how many anomalous decisions and region counts agree,
the largest map difference with 128 px tiles (both paths tiling, a tenth of the images), the
same on 12 random-size images (gray and RGB, below, at and above the tile), and
both in-process rates (images/s, decoded images in memory, maps and decisions).

    python benchmarks/export_parity.py [DATA ...] [--set key=value] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lista_cli.config import load_config
from lista_cli.detection.export.export import export
from lista_cli.detection.export.onnx_model import OnnxDetector
from lista_cli.detection.scoring.checkpoint import load_checkpoint
from lista_cli.detection.training.train import train
from lista_cli.io.imageio import ImageError, read_image
from lista_cli.io.inputs import collect_inputs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from accuracy import datasets  # noqa: E402


def rate(detect_batch, arrays: list[np.ndarray]) -> float:
    """Images/s of detect_batch over the arrays, one image per call, after one warm-up."""
    detect_batch(arrays[:1])
    started = time.perf_counter()
    for array in arrays:
        detect_batch([array])
    return len(arrays) / (time.perf_counter() - started)


def smallest_input_side(exported: OnnxDetector) -> int:
    """The least input side the graph scores: min_side holds at the working size, which is
    smaller than the input when the model shrinks its images (check_size says which)."""
    side = exported.min_side
    while True:
        try:
            exported.check_size(np.zeros((side, side, 1), np.float32), "probe")
            return side
        except ImageError:
            side += 1


def compare(folder: Path, work: Path, overrides: list[str]) -> dict:
    model = work / f"{folder.name}.pt"
    train(folder, load_config(None, overrides), model)
    detector = load_checkpoint(model)
    onnx_file = export(detector, work / f"{folder.name}.onnx")
    exported = OnnxDetector(onnx_file)
    arrays = [read_image(item.path) for item in collect_inputs([str(folder / "test")]).images]
    map_gap = score_gap = 0.0
    decisions = regions = 0
    for array in arrays:
        expected = detector.detect_batch([array])[0]
        got = exported.detect_batch([array])[0]
        map_gap = max(map_gap, float(np.abs(got.anomaly_map - expected.anomaly_map).max()) / detector.threshold)
        score_gap = max(score_gap, abs(got.score - expected.score) / max(abs(expected.score), 1e-12))
        decisions += got.anomalous == expected.anomalous
        regions += len(got.regions) == len(expected.regions)
    sample = arrays[: min(len(arrays), 40)]
    # The same graph with 128 px tiles (the tile rule is outside it): both paths tile every
    # image larger than that.
    detector.config.data.tile_size = 128
    exported.tile_rule = detector.tile_rule
    tiled_gap = max(
        float(np.abs(got.anomaly_map - expected.anomaly_map).max()) / detector.threshold
        for array in arrays[:: max(1, len(arrays) // 10)]
        for expected, got in [(detector.detect_batch([array])[0], exported.detect_batch([array])[0])]
    )
    # Random sizes from the smallest the graph scores to 2.5 tiles, gray and RGB, crossing the
    # tile side: maps and decisions.
    rng = np.random.default_rng(0)
    random_gap, random_agree = 0.0, 0
    smallest = smallest_input_side(exported)
    sides = [smallest, 127, 128, 129, 257, *rng.integers(smallest, max(320, smallest + 1), 12).tolist()]
    randoms = [
        rng.random((int(rng.choice(sides)), int(rng.choice(sides)), 1 + 2 * (i % 2)), np.float32) for i in range(12)
    ]
    for array in randoms:
        expected, got = detector.detect_batch([array])[0], exported.detect_batch([array])[0]
        random_gap = max(random_gap, float(np.abs(got.anomaly_map - expected.anomaly_map).max()) / detector.threshold)
        random_agree += got.anomalous == expected.anomalous
    detector.config.data.tile_size = 1024
    exported.tile_rule = detector.tile_rule
    return {
        "images": len(arrays),
        "size": "x".join(map(str, arrays[0].shape[1::-1])),
        "map_gap": map_gap,
        "tiled_gap": tiled_gap,
        "random_gap": random_gap,
        "random_agree": f"{random_agree}/{len(randoms)}",
        "score_gap": score_gap,
        "decisions": decisions,
        "regions": regions,
        "torch_img_s": rate(detector.detect_batch, sample),
        "onnx_img_s": rate(exported.detect_batch, sample),
        "megabytes": onnx_file.stat().st_size / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="*", type=Path, default=[ROOT.parent / "shared" / "data"])
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override, e.g. train.steps=50"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for folder in datasets(args.data):
            rows[folder.name] = compare(folder, Path(tmp), args.overrides)
            print(folder.name, rows[folder.name], file=sys.stderr, flush=True)
    print(
        "| set | test images | image size | max map difference / threshold | max score difference (relative) |"
        " decisions agree | region counts agree | tiled (128 px tiles): max map difference |"
        " random sizes: max map difference | random sizes: decisions agree |"
        " PyTorch img/s | ONNX Runtime img/s | ONNX file MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['images']} | {r['size']} | {r['map_gap']:.1e} | {r['score_gap']:.1e} |"
            f" {r['decisions']}/{r['images']} | {r['regions']}/{r['images']} | {r['tiled_gap']:.1e} |"
            f" {r['random_gap']:.1e} | {r['random_agree']} |"
            f" {r['torch_img_s']:.1f} |"
            f" {r['onnx_img_s']:.1f} | {r['megabytes']:.1f} |"
        )
    print(f"\nmachine: {torch.get_num_threads()} torch threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
