"""Detect speed against the floor: images/s end to end and model forward, FLOP efficiency, memory.

Models are trained on sample_data (RGB, and a gray copy) at native resolution
(data.image_size=null), so a 1024² image really is scored at 1024². For each size and
channel count: end-to-end `detect` images/s (read PNG, model, write heatmap, mask, map,
scores row), maps images/s (all scales' models, code distances, fold and smoothing), forward-only
images/s (the unfolded layers alone), the forward's FLOP count divided by the matrix-multiply
rate measured in this run (its floor), the efficiency floor/actual, and the peak resident
memory of a fresh process scoring one image. Also the default config (trained on 128² images; auto size) at 256²,
and for it the whole `lista detect` process (start-up included) on 1 and 200 images.
Then the same native models exported (`lista export`) and run by ONNX Runtime against
PyTorch, in one process on the same decoded images: images/s of maps and decisions.
Then `lista train` on a PIPED type (whole command, default config) and the deblur
benchmark (`deblur_speed.py`: whole `lista deblur` command against `unsupervised_wiener`),
so one run has every speed figure of docs/speed.md.

    python benchmarks/speed.py [--sizes 128,256,512,1024] [--huge] [--train-set DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lista_cli.config import load_config
from lista_cli.detection.model import patches
from lista_cli.detection.scoring.checkpoint import load_checkpoint
from lista_cli.detection.training.train import train
from lista_cli.io.batch import detect
from lista_cli.io.inputs import collect_inputs

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "paper_BRG01"
PIPED_TYPE = ROOT.parent / "shared" / "data" / "piped" / "PA_BDP01_TL"


def train_seconds(data: Path, model: Path, overrides: list[str] | None = None) -> float:
    """`lista train DATA --out MODEL` as a user runs it (a fresh process, the default config
    with `overrides` KEY=VALUE), in seconds."""
    started = time.perf_counter()
    sets = [arg for override in overrides or [] for arg in ("--set", override)]
    run = [sys.executable, "-m", "lista_cli.cli", "train", str(data), "--out", str(model), "-q", *sets]
    subprocess.run(run, check=True)
    return time.perf_counter() - started


def forward_flops(detector, height: int, width: int) -> float:
    """Multiply-adds x 2 of the K layers' matrix products for one image (LISTA-CP / full)."""
    cfg = detector.config
    rows, cols = patches.grid_shape(height, width, cfg.patch.size, cfg.patch.stride)
    count, dim, rank = rows * cols, detector.model.dim, detector.model.basis.shape[1]
    per_layer = 2 * count * dim * dim if detector.model.kind != "alista" else 4 * count * dim * rank
    return detector.model.layers * per_layer + 4 * count * dim * rank  # + the noise scale's projection


def matmul_rate(count: int, dim: int) -> float:
    """FLOP/s of (count x dim) @ (dim x dim) in float32 on this machine, best of 5."""
    a, b = torch.rand(count, dim), torch.rand(dim, dim)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(5):
            a @ b
        best = min(best, (time.perf_counter() - started) / 5)
    return 2 * count * dim * dim / best


def texture_images(folder: Path, size: int, channels: int, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    source = Image.open(sorted((SAMPLE / "train" / "good").glob("*.png"))[0])
    source = source.convert("RGB" if channels == 3 else "L").resize((size, size))
    for i in range(count):
        (source.rotate(90 * (i % 4))).save(folder / f"img{i:03d}.png")


def peak_memory(model: Path, image: Path, out: Path) -> float:
    """Peak RSS (MB) of a fresh `lista detect` process on one image."""
    code = (
        "import sys; from lista_cli.cli import app; sys.argv=['lista','detect',"
        f"'{model}','{image}','--out','{out}','-q']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])"
    )
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(output.strip().splitlines()[-1]) / 1024


def whole_process(model: Path, tmp: Path, count: int) -> dict:
    """`lista detect` as a user runs it (a fresh process) on 1 and on `count` 256² RGB images,
    against the in-process rate of the same images."""
    folder = tmp / "process_in"
    texture_images(folder, 256, 3, count)

    def command(inputs: list[str], out: Path) -> float:
        started = time.perf_counter()
        run = [sys.executable, "-m", "lista_cli.cli", "detect", str(model), *inputs, "--out", str(out), "-q"]
        subprocess.run(run, check=True)
        return time.perf_counter() - started

    first = str(sorted(folder.iterdir())[0])
    one = command([first], tmp / "process_one")
    every = command([str(folder)], tmp / "process_all")
    if model.suffix == ".onnx":
        from lista_cli.detection.export.onnx_model import OnnxDetector

        detector = OnnxDetector(model)
    else:
        detector = load_checkpoint(model)
    inputs = collect_inputs([str(folder)]).images
    detect(detector, inputs[:2], tmp / "process_warm")
    summary = detect(detector, inputs, tmp / "process_in_process")
    return {
        "images": count,
        "one_image_s": one,
        "all_images_s": every,
        "whole_img_s": count / every,
        "marginal_img_s": (count - 1) / max(every - one, 1e-9),
        "in_process_img_s": summary.processed / summary.seconds,
    }


def onnx_against_torch(models: dict[int, Path], tmp: Path, sizes: list[int]) -> list[dict]:
    """In-process images/s of the checkpoint (PyTorch) and its export (ONNX Runtime) on the
    same decoded images, best of 3 passes each."""
    from lista_cli.detection.export.export import export
    from lista_cli.detection.export.onnx_model import OnnxDetector

    rows = []
    for channels, model in models.items():
        detector = load_checkpoint(model)
        exported = OnnxDetector(export(detector, tmp / f"native{channels}.onnx"))
        for size in sizes:
            count = max(4, min(32, 2**21 // (size * size)))
            rng = np.random.default_rng(size)
            arrays = [rng.random((size, size, channels), dtype=np.float32) for _ in range(count)]
            rates = {}
            for name, run in (("torch", detector.detect_batch), ("onnx", exported.detect_batch)):
                run(arrays[:1])
                best = float("inf")
                for _ in range(3):
                    started = time.perf_counter()
                    for array in arrays:
                        run([array])
                    best = min(best, time.perf_counter() - started)
                rates[name] = count / best
            rows.append(
                {"size": size, "channels": channels, "torch_img_s": rates["torch"], "onnx_img_s": rates["onnx"]}
            )
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256,512,1024")
    parser.add_argument("--huge", action="store_true", help="also one 8000x8000 gray image in tiles")
    parser.add_argument("--process-images", type=int, default=200, help="images of the whole-process run")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/speed.json"))
    parser.add_argument("--train-set", type=Path, default=PIPED_TYPE, help="a category folder to time training on")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gray_data = tmp / "gray" / "train" / "good"
        gray_data.mkdir(parents=True)
        for path in (SAMPLE / "train" / "good").glob("*.png"):
            Image.open(path).convert("L").save(gray_data / path.name)
        models = {}
        for channels, data in ((3, SAMPLE), (1, tmp / "gray")):
            models[channels] = tmp / f"native{channels}.pt"
            train(data, load_config(None, ["data.image_size=null", "train.steps=20"]), models[channels])
        default_model, sparse_only_model = tmp / "default.pt", tmp / "sparse_only.pt"
        train(SAMPLE, load_config(None, ["train.steps=20"]), default_model)
        train(SAMPLE, load_config(None, ["train.steps=20", "score.bank_size=0", "data.scales=[1]"]), sparse_only_model)
        cases = [(s, c, models[c], "native") for s in map(int, args.sizes.split(",")) for c in (1, 3)]
        cases.append((256, 3, default_model, "default config (trained on 128² images)"))
        cases.append((256, 3, sparse_only_model, "first release: S only, scale 1"))
        for size, channels, model, mode in cases:
            detector = load_checkpoint(model)
            count = max(4, min(64, 2**22 // (size * size)))
            folder = tmp / f"in{size}_{channels}_{len(rows)}"
            texture_images(folder, size, channels, count)
            inputs = collect_inputs([str(folder)]).images
            detect(detector, inputs[:2], tmp / "warm")
            out = tmp / f"out{len(rows)}"
            summary = detect(detector, inputs, out)
            end_to_end = summary.processed / summary.seconds
            image = detector.prepare(
                np.asarray(Image.open(inputs[0].path), dtype=np.float32)[..., None] / 255
                if channels == 1
                else np.asarray(Image.open(inputs[0].path), np.float32) / 255
            )
            rows_in = patches.unfold(image[None], detector.config.patch.size, detector.config.patch.stride)
            with torch.inference_mode():
                detector.model(rows_in)
                started = time.perf_counter()
                repeats = max(2, count // 4)
                for _ in range(repeats):
                    detector.model(rows_in)
                forward_s = (time.perf_counter() - started) / repeats
                started = time.perf_counter()
                for _ in range(repeats):
                    detector.anomaly_maps(image[None])
                maps_s = (time.perf_counter() - started) / repeats
            h, w = image.shape[-2:]
            flops = forward_flops(detector, h, w)
            rate = matmul_rate(rows_in.shape[1], detector.model.dim)
            floor_s = flops / rate
            memory = peak_memory(model, inputs[0].path, tmp / "mem")
            row = {
                "size": size,
                "channels": channels,
                "mode": mode,
                "model_side": f"{w}x{h}",
                "end_to_end_img_s": end_to_end,
                "forward_img_s": 1 / forward_s,
                "maps_img_s": 1 / maps_s,
                "gflop": flops / 1e9,
                "matmul_gflop_s": rate / 1e9,
                "floor_img_s": 1 / floor_s,
                "efficiency": floor_s / forward_s,
                "end_to_end_share_of_forward": end_to_end * forward_s,
                "peak_rss_mb": memory,
            }
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
        process = whole_process(default_model, tmp, args.process_images)
        print(process, file=sys.stderr, flush=True)
        from lista_cli.detection.export.export import export

        exported_default = export(load_checkpoint(default_model), tmp / "default.onnx")
        onnx_process = whole_process(exported_default, tmp, args.process_images)
        print(onnx_process, file=sys.stderr, flush=True)
        onnx_rows = onnx_against_torch(models, tmp, [s for s in map(int, args.sizes.split(",")) if s <= 512])
        training = {"set": args.train_set.name, "seconds": train_seconds(args.train_set, tmp / "timed.pt")}
        print(training, file=sys.stderr, flush=True)
        deblur = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "deblur_speed.py")], capture_output=True, text=True, check=True
        ).stdout.strip()
        if args.huge:
            folder = tmp / "huge"
            folder.mkdir()
            ys, xs = np.mgrid[0:8000, 0:8000]
            Image.fromarray(((np.sin(xs / 5) * np.cos(ys / 7) + 1) * 100).astype(np.uint8)).save(folder / "huge.png")
            del ys, xs
            started = time.perf_counter()
            memory = peak_memory(models[1], folder / "huge.png", tmp / "hugeout")
            huge = {
                "image": "8000x8000 gray, native resolution, tiles of 1024",
                "peak_rss_mb": memory,
                "seconds": time.perf_counter() - started,
            }
            print(huge, file=sys.stderr)
    print(
        "| image | mode | detect img/s (end to end) | maps img/s | forward img/s | floor img/s | forward efficiency |"
        " end to end / forward | GFLOP | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kind = "RGB" if r["channels"] == 3 else "gray"
        print(
            f"| {r['size']}² {kind} | {r['mode']} | {r['end_to_end_img_s']:.1f} | {r['maps_img_s']:.1f} |"
            f" {r['forward_img_s']:.1f} |"
            f" {r['floor_img_s']:.1f} | {100 * r['efficiency']:.0f} % |"
            f" {100 * r['end_to_end_share_of_forward']:.0f} % |"
            f" {r['gflop']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    print(
        f"\nWhole process, default config, {process['images']} images 256² RGB: `lista detect` took"
        f" {process['one_image_s']:.2f} s for 1 image (start-up: Python, torch, the model) and"
        f" {process['all_images_s']:.2f} s for all: {process['whole_img_s']:.1f} images/s whole process,"
        f" {process['marginal_img_s']:.1f} images/s after start-up, {process['in_process_img_s']:.1f} in-process"
        f" ({100 * process['whole_img_s'] / process['in_process_img_s']:.0f} % of it)."
    )
    print(
        f"\nThe same default model exported (`lista export`) and run by ONNX Runtime (`lista detect"
        f" MODEL.onnx`, no torch imported): {onnx_process['one_image_s']:.2f} s for 1 image,"
        f" {onnx_process['all_images_s']:.2f} s for {onnx_process['images']}: {onnx_process['whole_img_s']:.1f}"
        f" images/s whole process, {onnx_process['in_process_img_s']:.1f} in-process."
    )
    print("\n| image (native size) | PyTorch img/s | ONNX Runtime img/s | ONNX / PyTorch |")
    print("|---|---|---|---|")
    for r in onnx_rows:
        kind = "RGB" if r["channels"] == 3 else "gray"
        print(
            f"| {r['size']}² {kind} | {r['torch_img_s']:.1f} | {r['onnx_img_s']:.1f} |"
            f" {r['onnx_img_s'] / r['torch_img_s']:.2f} |"
        )
    if args.huge:
        print(f"\n8000x8000 gray (native, tiled): peak RSS {huge['peak_rss_mb']:.0f} MB, {huge['seconds']:.1f} s")
    print(f"\nTraining, `lista train {args.train_set.name}` whole command, default config: {training['seconds']:.1f} s")
    print(f"\nDeblurring (`benchmarks/deblur_speed.py`):\n\n{deblur}")
    rate = [r["matmul_gflop_s"] for r in rows]
    print(f"\nfloat32 matrix products measured in this run: {min(rate):.0f}–{max(rate):.0f} GFLOP/s")
    print(
        f"\nmachine: {torch.get_num_threads()} torch threads, torch {torch.__version__};"
        f" process baseline RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "rows": rows,
        "whole_process": process,
        "onnx": onnx_rows,
        "onnx_whole_process": onnx_process,
        "training": training,
        "deblur": deblur,
    }
    args.json.write_text(json.dumps({**results, "huge": huge if args.huge else None}, indent=2))


if __name__ == "__main__":
    main()
