"""Normal images whose whole map runs hot: damping by the map's own level.

Some normal images score high everywhere rather than in one place: a rougher or brighter
part, a surface with more grain. On kolektor the median of a good test image's map ranges
up to 3.4x the typical one, and such an image's maximum outranks many real cracks without
any defect in it. So training measures the level (median) of the map of every normal image;
the reference is their 0.9 quantile, so the bulk of normal images is left as it is. `detect`
divides a map whose level is above the reference by level / reference, but by no more than
the largest ratio among the normal images (the cap). Like the edge damping it only damps,
and only as far as normal images need: a defect covering less than half of the image
barely moves the median, and an image hotter as a whole than any normal one keeps the
excess.
"""

from __future__ import annotations

import torch

QUANTILE = 0.9  # of the normal maps' levels: the reference above which a map is damped


def map_levels(maps: torch.Tensor) -> torch.Tensor:
    """(B, h, w) maps -> (B,) level of each: the lower median of its pixels (an order
    statistic, so an exported graph finds the same value)."""
    flat = maps.reshape(maps.shape[0], -1)
    return flat.kthvalue((flat.shape[1] + 1) // 2, dim=1).values


def level_reference(levels: list[float]) -> tuple[float, float]:
    """Levels of normal maps -> (reference, cap): their QUANTILE (linear interpolation),
    and the largest level / reference (at least 1)."""
    values = torch.tensor(levels, dtype=torch.float64)
    reference = max(float(torch.quantile(values, QUANTILE)), 1e-12)
    return reference, max(1.0, float(values.max()) / reference)


def damp_level(maps: torch.Tensor, reference: float | None, cap: float) -> torch.Tensor:
    """(B, h, w) maps each divided by clamp(level / reference, 1, cap); unchanged when
    `reference` is None (models trained without it)."""
    if reference is None:
        return maps
    divisor = (map_levels(maps) / reference).clamp(1.0, cap)
    return maps / divisor.to(maps.dtype)[:, None, None]
