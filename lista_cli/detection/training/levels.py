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
excess. The level is the map's lower median (postprocess.lower_median) and the damping
postprocess.Finish.damp_level, in numpy for both runtimes.
"""

from __future__ import annotations

import torch

QUANTILE = 0.9  # of the normal maps' levels: the reference above which a map is damped


def level_reference(levels: list[float]) -> tuple[float, float]:
    """Levels of normal maps -> (reference, cap): their QUANTILE (linear interpolation),
    and the largest level / reference (at least 1)."""
    values = torch.tensor(levels, dtype=torch.float64)
    reference = max(float(torch.quantile(values, QUANTILE)), 1e-12)
    return reference, max(1.0, float(values.max()) / reference)
