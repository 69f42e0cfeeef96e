"""Drawn synthetic defects for validation: scratches and stains, a different kind from CutPaste.

Training learns from CutPaste; choosing the kept model on the same kind of defect would
reward over-fitting to it. These defects are drawn, not pasted: a thin polyline a little
darker or brighter than the texture (scratch), or a soft blob of shifted brightness (stain).
Sizes scale with the image; seeded through the torch.Generator passed in.
"""

from __future__ import annotations

import math

import torch


def _uniform(rng: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=rng).item()


def _segment_distance(ys: torch.Tensor, xs: torch.Tensor, a: tuple[float, float], b: tuple[float, float]):
    """Distance of every pixel (ys, xs) to the segment a-b."""
    dy, dx = b[0] - a[0], b[1] - a[1]
    length2 = max(dy * dy + dx * dx, 1e-9)
    t = (((ys - a[0]) * dy + (xs - a[1]) * dx) / length2).clamp(0, 1)
    return torch.hypot(ys - (a[0] + t * dy), xs - (a[1] + t * dx))


def scratch(image: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A thin polyline of 2-4 segments, 1-3 px wide at 128 px, shifted in brightness."""
    _, height, width = image.shape
    side = min(height, width)
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)
    point = (_uniform(rng, 0, height - 1), _uniform(rng, 0, width - 1))
    angle = _uniform(rng, 0, 2 * math.pi)
    distance = torch.full((height, width), float("inf"))
    for _ in range(int(torch.randint(2, 5, (), generator=rng))):
        angle += _uniform(rng, -0.6, 0.6)
        step = _uniform(rng, 0.08, 0.2) * side
        nxt = (
            min(max(point[0] + step * math.sin(angle), 0), height - 1),
            min(max(point[1] + step * math.cos(angle), 0), width - 1),
        )
        distance = torch.minimum(distance, _segment_distance(ys, xs, point, nxt))
        point = nxt
    half_width = _uniform(rng, 0.5, 1.5) * max(side / 128, 0.5)
    mask = distance <= half_width
    shift = _uniform(rng, 0.12, 0.35) * (1 if torch.rand((), generator=rng) < 0.5 else -1)
    return (image + shift * mask).clamp(0, 1), mask


def stain(image: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A soft elliptic blob of shifted brightness; the mask is where the shift exceeds half its peak."""
    _, height, width = image.shape
    side = min(height, width)
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)
    cy, cx = _uniform(rng, 0.15, 0.85) * height, _uniform(rng, 0.15, 0.85) * width
    ry, rx = (_uniform(rng, 0.04, 0.12) * side for _ in range(2))
    weight = torch.exp(-(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2))
    shift = _uniform(rng, 0.08, 0.25) * (1 if torch.rand((), generator=rng) < 0.5 else -1)
    return (image + shift * weight).clamp(0, 1), weight > 0.5


def drawn_defect(image: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) image in [0, 1] -> (augmented, mask): a scratch or a stain, half and half."""
    return scratch(image, rng) if torch.rand((), generator=rng) < 0.5 else stain(image, rng)
