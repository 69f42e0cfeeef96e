"""`lista deblur` per image, whole command, against scikit-image's unsupervised_wiener.

Makes N blurred, noisy 512² 16-bit gray PNGs (scikit-image's camera, shifted per image;
gaussian:2, noise 0.01), then times in one run: the whole `lista deblur` command on 1 and on
N images (the marginal time per image excludes start-up), the same command's in-process
solve per image, and `skimage.restoration.unsupervised_wiener` per image in-process.

    python benchmarks/deblur_speed.py [--images 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data
from skimage.restoration import unsupervised_wiener

from lista_cli.restoration.blur import Blur, parse_psf
from lista_cli.restoration.deblur import Deconvolver
from lista_cli.restoration.restore import keep_freed_memory

PSF = "gaussian:2"


def make_images(folder: Path, count: int) -> list[np.ndarray]:
    sharp = data.camera().astype(np.float64) / 255
    blur = Blur(parse_psf(PSF), "reflect")
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        shifted = np.roll(sharp, (7 * index, 11 * index), axis=(0, 1))
        blurred = np.clip(blur.A(shifted) + 0.01 * rng.standard_normal(shifted.shape), 0, 1)
        Image.fromarray(np.round(blurred * 65535).astype(np.uint16)).save(folder / f"img{index:03d}.png")
        images.append(blurred)
    return images


def command_seconds(inputs: list[Path], out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "lista_cli.cli", "deblur", *map(str, inputs), "--psf", PSF, "--out", str(out), "-q"],
        check=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        images = make_images(folder, args.images)
        inputs = sorted(folder.iterdir())
        one = command_seconds(inputs[:1], Path(tmp) / "one")
        many = command_seconds(inputs, Path(tmp) / "many")
        marginal = (many - one) / (len(inputs) - 1)
        blur = Blur(parse_psf(PSF), "reflect")
        deconvolve = Deconvolver(blur, "auto", reg="laplacian")  # the command's default, as it runs
        keep_freed_memory()  # as the command does (unsupervised_wiener below gains from it too)
        deconvolve(images[0])
        started = time.perf_counter()
        for image in images[1:6]:
            deconvolve(image)
        solve = (time.perf_counter() - started) / 5
        started = time.perf_counter()
        for image in images[:3]:
            unsupervised_wiener(image, parse_psf(PSF), rng=0)
        wiener = (time.perf_counter() - started) / 3
    print("| 512² 16-bit gray, gaussian:2 | ms per image |")
    print("|---|---|")
    print(f"| `lista deblur` whole command, 1 image (start-up included) | {1000 * one:.0f} |")
    print(f"| `lista deblur` whole command, marginal per image ({args.images} images) | {1000 * marginal:.0f} |")
    print(f"| `Deconvolver` in-process (Laplacian, noise estimate, UPRE α search and solve) | {1000 * solve:.0f} |")
    print(f"| `unsupervised_wiener` in-process | {1000 * wiener:.0f} |")
    print(f"\nspeed-up, whole command against unsupervised_wiener: {wiener / marginal:.1f}x")


if __name__ == "__main__":
    main()
