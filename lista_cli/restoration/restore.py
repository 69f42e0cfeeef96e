"""`lista deblur` and `lista blur` over many images: mirrored outputs, one bad image never stops a batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ListaError
from ..io.imageio import IMAGE_EXTENSIONS, bit_depth, read_image, save_image
from ..io.inputs import InputImage
from ..io.outputs import check_output_dir
from .blur import Blur
from .deblur import tikhonov
from .quality import psnr, ssim


@dataclass
class BatchSummary:
    processed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def find_reference(reference_dir: Path, item: InputImage) -> Path | None:
    """The sharp original of `item` in `reference_dir`: same relative stem, any image suffix."""
    for suffix in IMAGE_EXTENSIONS + tuple(s.upper() for s in IMAGE_EXTENSIONS):
        candidate = reference_dir / (item.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _each_image(
    images: list[InputImage],
    out_dir: Path,
    work: Callable[[InputImage, np.ndarray], tuple[np.ndarray, dict[str, Any]]],
    on_result: Callable[[dict[str, Any]], None] | None,
    on_failure: Callable[[str, str], None] | None,
    on_progress: Callable[[int], None] | None,
) -> BatchSummary:
    started = time.perf_counter()
    check_output_dir(out_dir)
    summary = BatchSummary()
    for item in images:
        try:
            image = read_image(item.path)
            restored, info = work(item, image)
            output = out_dir / (item.name + ".png")
            save_image(output, restored, bit_depth(item.path))
            summary.processed += 1
            if on_result:
                on_result({"image": str(item.path), "output": str(output), **info})
        except ListaError as exc:
            message = str(exc) if str(item.path) in str(exc) else f"{item.path}: {exc}"
            summary.failures.append((str(item.path), message))
            if on_failure:
                on_failure(str(item.path), message)
        if on_progress:
            on_progress(1)
    summary.seconds = time.perf_counter() - started
    return summary


def deblur_images(
    images: list[InputImage],
    out_dir: Path,
    blur: Blur,
    alpha: float | str = "auto",
    reg: str = "identity",
    noise_sigma: float | None = None,
    rule: str | None = None,
    reference_dir: Path | None = None,
    **callbacks: Any,
) -> BatchSummary:
    """Tikhonov-deblur every image into `out_dir`; PSNR/SSIM when a reference is found."""

    def work(item: InputImage, image: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        started = time.perf_counter()
        result = tikhonov(image, blur, alpha, reg, noise_sigma, rule)
        restored = np.clip(result.image, 0.0, 1.0)
        info: dict[str, Any] = {
            "alpha": result.alpha,
            "method": result.method,
            "seconds": time.perf_counter() - started,
        }
        if result.sigma is not None:
            info["noise_sigma"] = result.sigma
        if reference_dir is not None:
            ref_path = find_reference(reference_dir, item)
            if ref_path is None:
                info["reference"] = None
            else:
                sharp = read_image(ref_path)
                if sharp.shape != restored.shape:
                    raise ListaError(
                        f"{ref_path}: reference is {sharp.shape[1]}x{sharp.shape[0]}, image is"
                        f" {restored.shape[1]}x{restored.shape[0]}"
                    )
                info.update(
                    reference=str(ref_path),
                    psnr=psnr(sharp, restored),
                    ssim=ssim(sharp, restored),
                    psnr_input=psnr(sharp, image),
                )
        return restored, info

    return _each_image(images, out_dir, work, **callbacks)


def blur_images(
    images: list[InputImage], out_dir: Path, blur: Blur, noise_sigma: float = 0.0, seed: int = 0, **callbacks: Any
) -> BatchSummary:
    """Apply the PSF and optional Gaussian noise (seeded per image name) to every image."""

    def work(item: InputImage, image: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        blurred = blur.A(image)
        if noise_sigma > 0:
            rng = np.random.default_rng([seed, *item.name.encode()])
            blurred = blurred + noise_sigma * rng.standard_normal(blurred.shape)
        return np.clip(blurred, 0.0, 1.0), {"noise_sigma": noise_sigma}

    return _each_image(images, out_dir, work, **callbacks)
