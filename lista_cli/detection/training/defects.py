"""Synthetic defects drawn into normal images, of other families than CutPaste.

Validation scores every family (with CutPaste) and chooses the kept step, the map mix and
the working scale on their mean, so no single kind of defect decides. With
`train.defects: all` (the default) training also gives half of its defective crops a
family drawn from these, while validation draws them on held-out images it never trained on.
Real defects come in many kinds. Families (each returns the augmented image and its mask):
    scratch    thin polyline a little darker or brighter than the texture
    stain      soft blob of shifted brightness
    crack      thin dark random walk, 1-2.5 px wide in the image's own pixels (not scaled)
    fibre      long smooth curve of low contrast, 1-3 px wide at 128 px
    smudge     a disk blurred and flattened towards its mean (local loss of contrast)
    unevenness a large smooth brightness change (tens of percent of the image side)
    perlin     a Perlin-noise-shaped region blended with texture from elsewhere in the
               image, flipped and shifted in brightness (as DRAEM makes its anomalies)
Sizes scale with the image side unless said otherwise; seeded through the torch.Generator.
"""

from __future__ import annotations

import math

import torch

from ..scoring.pixel_maps import gaussian_smooth
from .cutpaste import uniform


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
    point = (uniform(rng, 0, height - 1), uniform(rng, 0, width - 1))
    angle = uniform(rng, 0, 2 * math.pi)
    distance = torch.full((height, width), float("inf"))
    for _ in range(int(torch.randint(2, 5, (), generator=rng))):
        angle += uniform(rng, -0.6, 0.6)
        step = uniform(rng, 0.08, 0.2) * side
        nxt = (
            min(max(point[0] + step * math.sin(angle), 0), height - 1),
            min(max(point[1] + step * math.cos(angle), 0), width - 1),
        )
        distance = torch.minimum(distance, _segment_distance(ys, xs, point, nxt))
        point = nxt
    half_width = uniform(rng, 0.5, 1.5) * max(side / 128, 0.5)
    mask = distance <= half_width
    shift = uniform(rng, 0.12, 0.35) * (1 if torch.rand((), generator=rng) < 0.5 else -1)
    return (image + shift * mask).clamp(0, 1), mask


def stain(image: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A soft elliptic blob of shifted brightness; the mask is where the shift exceeds half its peak."""
    _, height, width = image.shape
    side = min(height, width)
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1)
    cy, cx = uniform(rng, 0.15, 0.85) * height, uniform(rng, 0.15, 0.85) * width
    ry, rx = (uniform(rng, 0.04, 0.12) * side for _ in range(2))
    weight = torch.exp(-(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2))
    shift = uniform(rng, 0.08, 0.25) * (1 if torch.rand((), generator=rng) < 0.5 else -1)
    return (image + shift * weight).clamp(0, 1), weight > 0.5


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(height, dtype=torch.float32).view(-1, 1), torch.arange(width, dtype=torch.float32).view(1, -1)


def _curve_distance(height: int, width: int, points: list[tuple[float, float]]) -> torch.Tensor:
    """(H, W) distance of every pixel to the polyline through `points`."""
    ys, xs = _grid(height, width)
    distance = torch.full((height, width), float("inf"))
    for a, b in zip(points, points[1:], strict=False):
        distance = torch.minimum(distance, _segment_distance(ys, xs, a, b))
    return distance


def _walk(height: int, width: int, length: float, turn: float, rng: torch.Generator) -> list[tuple[float, float]]:
    """Points of a random walk of about `length` px in 3 px steps, the heading changing by
    up to `turn` radians a step; it stays inside the image."""
    point = (uniform(rng, 0.1, 0.9) * (height - 1), uniform(rng, 0.1, 0.9) * (width - 1))
    angle = uniform(rng, 0, 2 * math.pi)
    points = [point]
    for _ in range(max(2, round(length / 3))):
        angle += uniform(rng, -turn, turn)
        point = (
            min(max(point[0] + 3 * math.sin(angle), 0), height - 1),
            min(max(point[1] + 3 * math.cos(angle), 0), width - 1),
        )
        points.append(point)
    return points


def _signed(rng: torch.Generator, low: float, high: float) -> float:
    return uniform(rng, low, high) * (1 if torch.rand((), generator=rng) < 0.5 else -1)


def crack(image: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A thin dark random walk, 1-2.5 px wide in the image's own pixels, 15-40 % of the side long."""
    _, height, width = image.shape
    side = min(height, width)
    distance = _curve_distance(height, width, _walk(height, width, uniform(rng, 0.15, 0.4) * side, 0.5, rng))
    mask = distance <= uniform(rng, 0.5, 1.25)
    darkness = uniform(rng, 0.15, 0.4)
    return (image - darkness * mask).clamp(0, 1), mask


def fibre(image: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A long smooth curve (30-80 % of the side) of low contrast with a soft profile."""
    _, height, width = image.shape
    side = min(height, width)
    distance = _curve_distance(height, width, _walk(height, width, uniform(rng, 0.3, 0.8) * side, 0.15, rng))
    half_width = uniform(rng, 0.5, 1.5) * max(side / 128, 1.0)
    profile = torch.exp(-0.5 * (distance / half_width) ** 2)
    shift = _signed(rng, 0.05, 0.15)
    return (image + shift * profile).clamp(0, 1), profile > 0.5


def smudge(image: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A soft-edged disk (radius 6-15 % of the side) blurred and pulled towards its mean."""
    _, height, width = image.shape
    side = min(height, width)
    ys, xs = _grid(height, width)
    cy, cx = uniform(rng, 0.15, 0.85) * height, uniform(rng, 0.15, 0.85) * width
    radius = uniform(rng, 0.06, 0.15) * side
    weight = torch.sigmoid((radius - torch.hypot(ys - cy, xs - cx)) / max(radius * 0.15, 1.0))
    inside = weight > 0.5
    blurred = gaussian_smooth(image, uniform(rng, 1.0, 3.0) * max(side / 128, 1.0), border="replicate")
    mean = image[:, inside].mean(dim=1).view(-1, 1, 1) if inside.any() else image.mean()
    flat = mean + uniform(rng, 0.2, 0.6) * (blurred - mean) + _signed(rng, 0.0, 0.05)
    return (image * (1 - weight) + flat * weight).clamp(0, 1), inside


def unevenness(image: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth elliptic brightness change with a radius of 15-35 % of the side."""
    _, height, width = image.shape
    side = min(height, width)
    ys, xs = _grid(height, width)
    cy, cx = uniform(rng, 0.1, 0.9) * height, uniform(rng, 0.1, 0.9) * width
    ry, rx = (uniform(rng, 0.15, 0.35) * side for _ in range(2))
    weight = torch.exp(-0.5 * (((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2))
    return (image + _signed(rng, 0.06, 0.15) * weight).clamp(0, 1), weight > 0.5


def perlin_noise(height: int, width: int, cells: tuple[int, int], rng: torch.Generator) -> torch.Tensor:
    """(H, W) 2-D Perlin gradient noise with `cells` (rows, columns) lattice cells, about in [-1, 1]."""
    rows, cols = cells
    angles = 2 * math.pi * torch.rand(rows + 1, cols + 1, generator=rng)
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # (rows+1, cols+1, 2)
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) * rows / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) * cols / width
    y0, x0 = ys.floor().long().clamp(max=rows - 1), xs.floor().long().clamp(max=cols - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[(y0 + dy)[:, None], (x0 + dx)[None, :]]  # (H, W, 2)
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: torch.Tensor) -> torch.Tensor:
        return t * t * t * (t * (t * 6 - 15) + 10)

    wy, wx = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - wx) + corner(0, 1) * wx
    bottom = corner(1, 0) * (1 - wx) + corner(1, 1) * wx
    return math.sqrt(2) * (top * (1 - wy) + bottom * wy)


def perlin(image: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A Perlin-noise-shaped region (DRAEM) filled with the image's own texture from elsewhere,
    flipped and shifted in brightness, blended at 50-100 % opacity."""
    _, height, width = image.shape
    for _ in range(10):  # a threshold that keeps 1-25 % of the image
        cells = (int(torch.randint(2, 7, (), generator=rng)), int(torch.randint(2, 7, (), generator=rng)))
        noise = perlin_noise(height, width, cells, rng)
        mask = noise > uniform(rng, 0.3, 0.6)
        if 0.01 <= mask.float().mean() <= 0.25:
            break
    else:
        mask = noise >= noise.flatten().kthvalue(max(1, round(0.95 * noise.numel()))).values
    source = torch.roll(
        image, (int(torch.randint(height, (), generator=rng)), int(torch.randint(width, (), generator=rng))), (1, 2)
    )
    source = source.flip(-1) if torch.rand((), generator=rng) < 0.5 else source.flip(-2)
    source = source * (1 + uniform(rng, -0.2, 0.2)) + _signed(rng, 0.03, 0.12)
    opacity = uniform(rng, 0.5, 1.0)
    blended = image * (1 - opacity) + source * opacity
    return torch.where(mask, blended, image).clamp(0, 1), mask


FAMILIES = {
    "scratch": scratch,
    "stain": stain,
    "crack": crack,
    "fibre": fibre,
    "smudge": smudge,
    "unevenness": unevenness,
    "perlin": perlin,
}


def drawn_defect(
    image: torch.Tensor, rng: torch.Generator, family: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) image in [0, 1] -> (augmented, mask) of the named family, or a scratch or a
    stain, half and half (the first release's validation defects)."""
    if family is not None:
        return FAMILIES[family](image, rng)
    return scratch(image, rng) if torch.rand((), generator=rng) < 0.5 else stain(image, rng)
