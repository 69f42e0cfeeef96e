"""CutPaste and CutPaste-Scar synthetic defects (Li et al., CVPR 2021), seeded.

A region is cut from one place of a normal image and pasted, with a light colour
jitter, at another. CutPaste: a rectangle of `area` share of the image with aspect
ratio in `aspect` (log-uniform). Scar: a thin rectangle `scar_width` x `scar_length`
px, rotated within +-`scar_angle` degrees; px sizes are given at `reference_size` and
scaled to the image. Only pixels inside the returned mask can change, so the exact
sparse target is patches(augmented) - patches(image).
"""

from __future__ import annotations

import math

import torch

from ...config import CutPasteConfig


def uniform(rng: torch.Generator, low: float, high: float) -> float:
    """Uniform float in [low, high) from the seeded generator (shared with defects.py)."""
    return low + (high - low) * torch.rand((), generator=rng).item()


def _randint(rng: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(0, max(high, 0) + 1, (), generator=rng).item())


def _rotated_rect_mask(
    height: int, width: int, centre: tuple[float, float], size: tuple[float, float], angle: float
) -> torch.Tensor:
    """(H, W) bool mask of a rectangle (length along x, thickness along y) rotated by angle."""
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1) - centre[0]
    xs = torch.arange(width, dtype=torch.float32).view(1, -1) - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    along = xs * cos + ys * sin
    across = -xs * sin + ys * cos
    return (along.abs() <= size[0] / 2) & (across.abs() <= size[1] / 2)


def cutpaste(
    image: torch.Tensor, rng: torch.Generator, cfg: CutPasteConfig, scar: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) image in [0, 1] -> (augmented (C, H, W), mask (H, W) bool)."""
    channels, height, width = image.shape
    if scar is None:
        scar = torch.rand((), generator=rng).item() < cfg.scar_share
    if scar:
        scale = min(height, width) / cfg.reference_size
        length = max(2.0, uniform(rng, *cfg.scar_length) * scale)
        thickness = max(1.0, uniform(rng, *cfg.scar_width) * scale)
        angle = math.radians(uniform(rng, -cfg.scar_angle, cfg.scar_angle))
        # Bounding box of the rotated scar, so source and destination stay inside the image.
        box_h = min(height - 1, math.ceil(abs(length * math.sin(angle)) + abs(thickness * math.cos(angle))) + 1)
        box_w = min(width - 1, math.ceil(abs(length * math.cos(angle)) + abs(thickness * math.sin(angle))) + 1)
    else:
        area = uniform(rng, *cfg.area) * height * width
        log_low, log_high = math.log(cfg.aspect[0]), math.log(cfg.aspect[1])
        ratio = math.exp(uniform(rng, log_low, log_high))
        box_h = max(1, min(height - 1, round(math.sqrt(area * ratio))))
        box_w = max(1, min(width - 1, round(math.sqrt(area / ratio))))
    src_y, src_x = _randint(rng, height - box_h), _randint(rng, width - box_w)
    dst_y, dst_x = _randint(rng, height - box_h), _randint(rng, width - box_w)
    if scar:
        centre = (dst_y + (box_h - 1) / 2, dst_x + (box_w - 1) / 2)
        mask = _rotated_rect_mask(height, width, centre, (length, thickness), angle)
    else:
        mask = torch.zeros(height, width, dtype=torch.bool)
        mask[dst_y : dst_y + box_h, dst_x : dst_x + box_w] = True
    # Source content, translated onto the destination box.
    shifted = image.clone()
    shifted[:, dst_y : dst_y + box_h, dst_x : dst_x + box_w] = image[:, src_y : src_y + box_h, src_x : src_x + box_w]
    gains = torch.tensor([uniform(rng, -cfg.jitter, cfg.jitter) for _ in range(channels)]).view(-1, 1, 1)
    offset = uniform(rng, -cfg.jitter, cfg.jitter) / 2
    jittered = (shifted * (1 + gains) + offset).clamp(0, 1)
    augmented = torch.where(mask, jittered, image)
    return augmented, mask
