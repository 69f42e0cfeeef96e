"""Rare normal structures the background model cannot explain: S damped per kind of patch.

The sparse part S is whatever the background subspace leaves out, and some legitimate
structures lie outside it too: on kolektor a saturated bright strip along the border where
the commutator's segments part (18 of 200 training images have one) lights S up as brightly
as a crack, and such normal images outranked real cracks. The code bank already knows these
patches (its coreset keeps rare codes), so after the layers are trained, training runs them
over the normal training patches, gives each patch to its nearest bank code and keeps per
code the mean S level of its patches (the mean over the patch's pixels of ||s|| over
channels, what the sparse map folds), shrunk towards the mean over all patches with a prior
of PRIOR_PATCHES so that a code holding a few patches gets no extreme level. A code whose
level is above the QUANTILE of all codes' levels gets the divisor (level / reference)^POWER,
every other code 1. `detect` divides each patch's S by the divisor of its nearest codes (the two
nearest blended, as for the residual levels) before folding it into the map.

Like the edge and level damping it only damps, and only where normal patches of that kind
carry more S than most: the bulk of the texture is untouched. The square root damps half way
(in log scale) to the full ratio: a defect whose patches resemble such a structure is not
erased with it. On kolektor (post hoc, three seeds) it gained as much image AUROC as the full
ratio and cost at most 0.001 pixel AUROC where the full ratio cost 0.002-0.003. Trained in,
the map mix is chosen with it and at the 0.9 quantile pixel AUROC lost up to 0.015 at a
seed; the 0.97 quantile (damping only the rarest codes) kept the image gain and most of the
pixel AUROC (README, "Sparse divisors").
"""

from __future__ import annotations

import math

import torch

from ..model import patches
from ..scoring import pixel_maps
from ..scoring.resampling import downsample

QUANTILE = 0.97  # of the codes' S levels: codes above it (the rarest 3 %) get a divisor
POWER = 0.5  # divisor = (level / reference)^POWER
PRIOR_PATCHES = 20.0  # a code's level is shrunk to the overall mean as if it held this many more patches
MAX_PATCHES = 400_000  # per scale: past it, a seeded random share of each image's patches is assigned


@torch.inference_mode()
def sparse_divisors(
    scale, images: list[torch.Tensor], patch: int, stride: int, channels: int, seed: int
) -> torch.Tensor:
    """(M,) the divisor of each code of `scale.bank`, from the trained `scale.model` run over
    the patches of the normal `images` (C, h, w) at model resolution, downsampled by the
    scale's factor. Each image runs whole, so its noise scale is the one detect measures."""
    model, bank = scale.model, scale.bank
    small = [downsample(t[None], scale.factor) for t in images]
    small = [t for t in small if min(t.shape[-2:]) >= patch]
    total = sum(math.prod(patches.grid_shape(*t.shape[-2:], patch, stride)) for t in small)
    share = min(1.0, MAX_PATCHES / max(total, 1))
    rng = torch.Generator().manual_seed(seed + 7919 * scale.factor)
    sums = torch.zeros(len(bank.codes), dtype=torch.float64)
    counts = torch.zeros(len(bank.codes), dtype=torch.float64)
    everything = torch.zeros((), dtype=torch.float64)
    assigned = 0
    for image in small:
        rows = patches.unfold(image, patch, stride)  # (1, N, d)
        levels = pixel_maps.sparse_norms(model(rows), channels)[0].mean(dim=1).double()  # (N,)
        centred = rows[0] - model.mean
        if share < 1.0:
            keep = torch.randperm(len(levels), generator=rng)[: max(1, round(share * len(levels)))]
            levels, centred = levels[keep], centred[keep]
        owner, _ = bank.nearest(bank.codes_of(centred))
        sums.index_add_(0, owner, levels)
        counts.index_add_(0, owner, torch.ones_like(levels))
        everything += levels.sum()
        assigned += len(levels)
    mean = everything / max(assigned, 1)
    code_levels = (sums + PRIOR_PATCHES * mean) / (counts + PRIOR_PATCHES)
    reference = torch.quantile(code_levels, QUANTILE).clamp(min=1e-12)
    return (code_levels / reference).clamp(min=1.0).pow(POWER).float()
