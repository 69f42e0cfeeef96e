"""The one tile rule of both runtimes: images larger than one tile at the working size are
scored in overlapping tiles so memory stays bounded. Every tile's forward pass measures the
noise scale on the whole image (inference.noise_scale), so a tiled map equals the untiled
one up to float rounding. Needs numpy only (no torch)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class TileRule(NamedTuple):
    """Tile side and margin (px at the working size), both multiples of stride * lcm(factors)
    so each scale's blocks and patch grid are the same in a tile as in the whole image."""

    tile: int
    margin: int

    @classmethod
    def of(cls, patch: int, stride: int, factors: list[int], tile_size: int, reach: int) -> TileRule:
        """The rule for this patch geometry, these image scales, data.tile_size and a
        smoothing that carries a pixel's value `reach` px."""
        grid = stride * math.lcm(*factors)
        margin = 2 * patch * max(factors) + reach
        return cls(max(grid, tile_size // grid * grid), math.ceil(margin / grid) * grid)

    def needs_tiles(self, height: int, width: int) -> bool:
        return max(height, width) > self.tile

    def boxes(self, height: int, width: int):
        """(y0, y1, x0, x1) of each tile with its margin, and (top, left, core_h, core_w) of
        the core it contributes."""
        tile, margin = self.tile, self.margin
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                y0, x0 = max(0, top - margin), max(0, left - margin)
                y1, x1 = min(height, top + tile + margin), min(width, left + tile + margin)
                yield (y0, y1, x0, x1), (top, left, min(tile, height - top), min(tile, width - left))

    def apply(self, score: Callable[[int, int, int, int], np.ndarray], height: int, width: int) -> np.ndarray:
        """(height, width) float32 map: score(y0, y1, x0, x1) -> that box's map, once for the
        whole image or per tile, the tiles' cores stitched."""
        if not self.needs_tiles(height, width):
            return np.asarray(score(0, height, 0, width), dtype=np.float32)
        out = np.empty((height, width), dtype=np.float32)
        for (y0, y1, x0, x1), (top, left, core_h, core_w) in self.boxes(height, width):
            tile_map = np.asarray(score(y0, y1, x0, x1))
            out[top : top + core_h, left : left + core_w] = tile_map[
                top - y0 : top - y0 + core_h, left - x0 : left - x0 + core_w
            ]
        return out
