"""Image edges that normal texture makes hot: a per-distance-to-edge damping of the map.

Near the image border a patch map is averaged over fewer patches, smoothing reflects, and
some parts have legitimate structure there (a commutator's bright gaps between segments,
a tile's bevel). On kolektor 8 of the 10 highest-scoring good test images peaked within
15 px of the border. So training measures, on the maps of normal images, a high quantile of
the map at each distance d from the left/right edges and from the top/bottom edges (up to a
band width D) against the same quantile inside the band; the map is divided there by
max(1, that ratio) (postprocess.Finish.damp_edges, in numpy for both runtimes). It only
ever damps, and only where normal images are hotter.
"""

from __future__ import annotations

import torch

QUANTILE = 0.99
MAX_SAMPLES = 1_000_000


def band_width(patch: int, coarsest: int, smoothing_reach: int, shorter_side: int) -> int:
    """Width D of the edge band: the reach of a coarsest-scale patch and of the smoothing
    (px), at most a quarter of the image's shorter side."""
    return max(1, min(2 * patch * coarsest + smoothing_reach, shorter_side // 4))


def _quantile(values: torch.Tensor) -> float:
    step = max(1, -(-values.numel() // MAX_SAMPLES))
    return float(torch.quantile(values.reshape(-1)[::step].double(), QUANTILE))


def edge_profile(maps: list[torch.Tensor], width: int) -> tuple[list[float], list[float]]:
    """Divisors (>= 1) for distances 0..width-1 from the top/bottom edges (rows) and from the
    left/right edges (columns), from normal (h, w) maps; non-increasing away from the edge."""
    inner = [m[width:-width, width:-width] for m in maps if min(m.shape) > 2 * width]
    if not inner:
        return [1.0] * width, [1.0] * width
    level = max(_quantile(torch.cat([m.reshape(-1) for m in inner])), 1e-12)
    profiles = []
    for axis in (0, 1):
        divisors = []
        for d in range(width):
            lines = []
            for m in maps:  # a row (column) line without the bands of the other two edges
                if min(m.shape) > 2 * width:
                    line = m.narrow(1 - axis, width, m.shape[1 - axis] - 2 * width)
                    lines += [line.select(axis, d), line.select(axis, m.shape[axis] - 1 - d)]
            divisors.append(max(1.0, _quantile(torch.cat(lines)) / level))
        for d in range(width - 2, -1, -1):  # damp the edge at least as much as further in
            divisors[d] = max(divisors[d], divisors[d + 1])
        profiles.append(divisors)
    return profiles[0], profiles[1]
