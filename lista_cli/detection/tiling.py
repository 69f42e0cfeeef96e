"""Images too large for one pass (at the working size, larger than data.tile_size) scored
in overlapping tiles, with the same result as one pass up to the noise scale, which is
measured once per image scale for the whole image."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from . import patches
from .resampling import downsample

if TYPE_CHECKING:
    from .detector import Detector


def tiled_map(detector: Detector, image: torch.Tensor) -> torch.Tensor:
    """(C, h, w) -> (h, w) map, scored in overlapping tiles of `data.tile_size` px so memory
    stays bounded; each tile carries a margin wide enough for patches and smoothing."""
    cfg = detector.config
    coarsest = max(s.factor for s in detector.scales)
    # Tile offsets are multiples of stride * f for every factor f, so each scale's blocks
    # and patch grid are the same in a tile as in the whole image.
    grid = cfg.patch.stride * math.lcm(*(s.factor for s in detector.scales))
    tile = max(grid, cfg.data.tile_size // grid * grid)
    height, width = image.shape[-2:]
    if height <= tile and width <= tile:
        return detector.anomaly_maps(image[None])[0]
    margin = 2 * cfg.patch.size * coarsest + detector.smoothing_reach
    margin = math.ceil(margin / grid) * grid
    # One noise scale per image scale for the whole image, from a sparser grid (<= 2^16 patches).
    noise = []
    for scale in detector.scales:
        small = downsample(image[None].to(detector.device), scale.factor)
        if min(small.shape[-2:]) < cfg.patch.size:  # too small for one patch: scored as nothing
            noise.append(small.new_ones(1, 1, 1))
            continue
        area = small.shape[-2] * small.shape[-1]
        step = cfg.patch.stride * max(1, math.ceil(math.sqrt(area / cfg.patch.stride**2 / 65536)))
        sample = patches.unfold(small, cfg.patch.size, step)
        noise.append(scale.model.noise_scale(sample - scale.model.mean))
    out = torch.empty(height, width)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            y0, x0 = max(0, top - margin), max(0, left - margin)
            y1, x1 = min(height, top + tile + margin), min(width, left + tile + margin)
            tile_map = detector.anomaly_maps(image[None, :, y0:y1, x0:x1], noise)[0]
            core_h, core_w = min(tile, height - top), min(tile, width - left)
            out[top : top + core_h, left : left + core_w] = tile_map[
                top - y0 : top - y0 + core_h, left - x0 : left - x0 + core_w
            ].cpu()
    return out
