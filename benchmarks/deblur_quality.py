"""Tikhonov deblurring (`lista deblur`) against oracle alpha and scikit-image's restorers.

Images: scikit-image's camera, moon and coins (gray, in [0, 1]). Blur: gaussian sigma=2 and
box 5, Gaussian noise sigma 0.01. Boundaries: 'periodic' (the blur wraps around, as the
FFT assumes) and 'camera' (the scene goes on past the frame: a larger image is blurred
and its centre cropped; lista solves with reflective boundaries). Prints PSNR / SSIM /
seconds per method and writes JSON and the restored images (to look at the borders).

    python benchmarks/deblur_quality.py [--out benchmarks/results/deblur]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data
from skimage.restoration import richardson_lucy, unsupervised_wiener, wiener

from lista_cli.restoration.blur import Blur, parse_psf
from lista_cli.restoration.deblur import tikhonov
from lista_cli.restoration.quality import psnr, ssim

IMAGES = {"camera": data.camera, "moon": data.moon, "coins": data.coins}
PSFS = ["gaussian:2", "box:5"]
NOISE = 0.01
MARGIN = 32  # px of scene beyond the frame in the 'camera' boundary case


def make_case(sharp_full: np.ndarray, psf: np.ndarray, boundary: str, rng: np.random.Generator):
    if boundary == "periodic":
        sharp = sharp_full
        blurred = Blur(psf, "periodic").A(sharp)
    else:
        blurred_full = Blur(psf, "reflect").A(sharp_full)
        crop = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
        sharp, blurred = sharp_full[crop], blurred_full[crop]
    return sharp, blurred + NOISE * rng.standard_normal(blurred.shape)


def oracle_alpha(y, blur, reg, sharp) -> tuple[float, np.ndarray]:
    """alpha maximising PSNR against the sharp image (golden section on log10 alpha)."""

    def loss(log_alpha):
        return -psnr(sharp, np.clip(tikhonov(y, blur, 10**log_alpha, reg).image, 0, 1))

    grid = np.linspace(-6, 1, 11)
    best = int(np.argmin([loss(g) for g in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    for _ in range(16):
        a, b = high - 0.618 * (high - low), low + 0.618 * (high - low)
        if loss(a) < loss(b):
            high = b
        else:
            low = a
    alpha = 10 ** ((low + high) / 2)
    return alpha, np.clip(tikhonov(y, blur, alpha, reg).image, 0, 1)


def best_wiener(y, psf, sharp) -> tuple[float, np.ndarray]:
    results = []
    for balance in np.logspace(-4, 1, 26):
        restored = np.clip(wiener(y, psf, balance), 0, 1)
        results.append((psnr(sharp, restored), balance, restored))
    _, balance, restored = max(results, key=lambda r: r[0])
    return balance, restored


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/deblur"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for name, loader in IMAGES.items():
        sharp_full = loader().astype(np.float64) / 255.0
        for spec in PSFS:
            psf = parse_psf(spec)
            for boundary in ("periodic", "camera"):
                sharp, y = make_case(sharp_full, psf, boundary, rng)
                blur = Blur(psf, "periodic" if boundary == "periodic" else "reflect")
                case = {"image": name, "psf": spec, "boundary": boundary, "blurred_psnr": psnr(sharp, np.clip(y, 0, 1))}
                methods = {}
                for reg in ("identity", "laplacian"):
                    result, seconds = timed(tikhonov, y, blur, "auto", reg)
                    restored = np.clip(result.image, 0, 1)
                    methods[f"lista auto {reg}"] = (restored, seconds, result.alpha)
                    alpha, oracle = oracle_alpha(y, blur, reg, sharp)
                    methods[f"oracle-alpha {reg}"] = (oracle, float("nan"), alpha)
                (balance, restored), seconds = timed(best_wiener, y, psf, sharp)
                methods["wiener (best balance)"] = (restored, seconds / 26, balance)
                (restored, _), seconds = timed(unsupervised_wiener, y, psf, rng=0)
                methods["unsupervised_wiener"] = (np.clip(restored, 0, 1), seconds, None)
                restored, seconds = timed(richardson_lucy, np.clip(y, 0, 1), psf, num_iter=30)
                methods["richardson_lucy (30 it.)"] = (np.clip(restored, 0, 1), seconds, None)
                for method, (restored, seconds, param) in methods.items():
                    case[method] = {
                        "psnr": psnr(sharp, restored),
                        "ssim": ssim(sharp, restored),
                        "seconds": seconds,
                        "param": param,
                    }
                tag = f"{name}_{spec.replace(':', '')}_{boundary}"
                Image.fromarray((np.clip(y, 0, 1) * 255).astype(np.uint8)).save(args.out / f"{tag}_blurred.png")
                best_lista = methods["lista auto identity"][0]
                Image.fromarray((best_lista * 255).round().astype(np.uint8)).save(args.out / f"{tag}_lista.png")
                rows.append(case)
                print(f"{tag}: " + ", ".join(f"{m} {case[m]['psnr']:.2f}" for m in methods), flush=True)
    method_names = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    print("\n| image | psf | boundary | blurred | " + " | ".join(method_names) + " |")
    print("|" + "---|" * (4 + len(method_names)))
    for case in rows:
        cells = [f"{case[m]['psnr']:.2f} / {case[m]['ssim']:.3f}" for m in method_names]
        print(
            f"| {case['image']} | {case['psf']} | {case['boundary']} | {case['blurred_psnr']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    print("\nPSNR dB / SSIM. Mean seconds per image:")
    for m in method_names:
        times = [c[m]["seconds"] for c in rows if not math.isnan(c[m]["seconds"])]
        if times:
            print(f"- {m}: {np.mean(times):.3f} s")
    gaps = {
        reg: [c[f"oracle-alpha {reg}"]["psnr"] - c[f"lista auto {reg}"]["psnr"] for c in rows]
        for reg in ("identity", "laplacian")
    }
    for reg, gap in gaps.items():
        print(f"- auto alpha vs oracle ({reg}): mean gap {np.mean(gap):.2f} dB, worst {np.max(gap):.2f} dB")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
