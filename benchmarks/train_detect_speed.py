"""Whole-command speed of configs side by side: `lista train` on one dev set, then `lista
detect` on 200 256² RGB images, each as a user runs it (a fresh process), in one run.

    python benchmarks/train_detect_speed.py --configs model.layers=10 model.layers=3

Each config is one or more comma-separated KEY=VALUE overrides ("" = the default). Timings
move with the machine and its load: compare configs as ratios within one run, and read them
beside the float32 GEMM rate printed before and after.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import matmul_rate, train_seconds, whole_process  # noqa: E402

DEFAULT_SET = Path(__file__).resolve().parents[2] / "shared" / "data" / "piped" / "PA_BRG01_RL"


def gemm_rate() -> str:
    return f"{min(matmul_rate(4096, 108) for _ in range(3)) / 1e9:.0f} GFLOP/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=[""], help="comma-separated overrides per config")
    parser.add_argument("--data", type=Path, default=DEFAULT_SET, help="the category folder to train on")
    parser.add_argument("--images", type=int, default=200, help="256² RGB images detect scores")
    args = parser.parse_args()
    print(f"float32 GEMM (4096 x 108 @ 108 x 108) before: {gemm_rate()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for number, config in enumerate(args.configs):
            overrides = [o for o in re.split(r",(?![^\[]*\])", config) if o]  # commas inside [...] are a list's
            model = tmp / f"model{number}.pt"
            seconds = train_seconds(args.data, model, overrides)
            rows.append((config or "default", seconds, whole_process(model, tmp / f"detect{number}", args.images)))
    print(f"float32 GEMM after: {gemm_rate()}\n")
    detect_header = f"`lista detect` {args.images} images: img/s"
    print(f"| config | `lista train {args.data.name}` s | {detect_header} | in-process img/s |")
    print("|---|---|---|---|")
    for config, seconds, detect in rows:
        print(f"| {config} | {seconds:.1f} | {detect['whole_img_s']:.1f} | {detect['in_process_img_s']:.1f} |")


if __name__ == "__main__":
    main()
