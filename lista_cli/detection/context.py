"""Context beyond one patch: each patch's codes at every image scale, stacked, against a bank.

A patch's code at scale 1 says what its p x p pixels look like; the codes of the coarse
patches that contain it (scale 2, 4: 2p, 4p px) say what surrounds it. A defect can be
typical at every scale on its own and still an unseen *combination*: a flat patch is normal
inside a brick, not where a mortar joint should pass. So each scale-1 patch gets the
descriptor [c_1 / n_1, c_2 / n_2, ...] (c_f: the code of the nearest patch of scale f's grid,
n_f: the RMS code norm of normal patches at that scale, so every scale weighs alike), and a
map scores its distance to a coreset of the descriptors of normal training patches, as the
per-scale code maps do.
"""

from __future__ import annotations

import torch

from .typicality import CodeBank


def coarse_index(count: int, coarse_count: int, factor: int, patch: int, stride: int) -> torch.Tensor:
    """For each of `count` scale-1 grid positions along an axis, the index of the scale-f
    grid position whose patch centre is nearest: fine centre i s + p/2, coarse (j s + p/2) f.
    Halves round up, not to even: shifting the image by whole coarse steps (a tile) then
    shifts every index alike."""
    centres = torch.arange(count, dtype=torch.float64) * stride + patch / 2
    index = torch.floor((centres / factor - patch / 2) / stride + 0.5).long()
    return index.clamp(0, coarse_count - 1)


def stack_codes(grids: list[torch.Tensor], factors: list[int], norms: list[float], patch: int, stride: int):
    """Per-scale code grids (gh_f, gw_f, R_f) -> (gh_1 * gw_1, sum R_f) stacked descriptors."""
    rows, cols = grids[0].shape[:2]
    parts = []
    for grid, factor, norm in zip(grids, factors, norms, strict=True):
        y = coarse_index(rows, grid.shape[0], factor, patch, stride)
        x = coarse_index(cols, grid.shape[1], factor, patch, stride)
        parts.append(grid[y][:, x] / norm)
    return torch.cat(parts, dim=-1).reshape(rows * cols, -1)


class ContextBank(torch.nn.Module):
    """A coreset bank of stacked multi-scale descriptors, with each scale's code norm."""

    def __init__(self, bank: CodeBank, norms: torch.Tensor) -> None:
        super().__init__()
        self.bank = bank
        self.register_buffer("norms", norms.clone().double())

    def distances(self, grids: list[torch.Tensor], factors: list[int], patch: int, stride: int) -> torch.Tensor:
        """Code grids of one image at every scale -> (1, gh_1 * gw_1) scaled nearest distances."""
        descriptors = stack_codes(grids, factors, self.norms.tolist(), patch, stride)
        return self.bank.code_distances(descriptors)[None]

    def without(self, image: int) -> ContextBank:
        return ContextBank(self.bank.without(image), self.norms)


@torch.inference_mode()
def build_context(
    scales: list, images: list[torch.Tensor], patch: int, stride: int, size: int, seed: int, candidates: int
) -> ContextBank:
    """A context bank from the normal training images: every scale's code grid of each
    image, the per-scale RMS code norms, and a coreset of `size` stacked descriptors (out
    of at most `candidates`, a seeded random share of each image's beyond that)."""
    from . import patches
    from .resampling import downsample

    factors = [scale.factor for scale in scales]
    per_image = []
    for image in images:
        grids = []
        for scale in scales:
            small = downsample(image[None], scale.factor)
            if min(small.shape[-2:]) < patch:
                grids = []
                break
            rows = patches.unfold(small, patch, stride)[0]
            shape = patches.grid_shape(small.shape[-2], small.shape[-1], patch, stride)
            grids.append(scale.bank.codes_of(rows - scale.model.mean).view(*shape, -1))
        per_image.append(grids)
    used = [grids for grids in per_image if grids]
    norms = [
        max(float(torch.cat([g[i].reshape(-1, g[i].shape[-1]) for g in used]).square().sum(1).mean().sqrt()), 1e-12)
        for i in range(len(scales))
    ]
    total = sum(g[0].shape[0] * g[0].shape[1] for g in used)
    share = min(1.0, candidates / max(total, 1))
    rng = torch.Generator().manual_seed(seed + 1299709)
    descriptors, origins = [], []
    for number, grids in enumerate(per_image):
        if not grids:
            continue
        rows = stack_codes(grids, factors, norms, patch, stride)
        if share < 1.0:
            rows = rows[torch.randperm(len(rows), generator=rng)[: max(1, round(share * len(rows)))]]
        descriptors.append(rows.float())
        origins.append(torch.full((len(rows),), number, dtype=torch.long))
    codes = torch.cat(descriptors)
    bank = CodeBank.from_codes(torch.eye(codes.shape[1]), codes, size, torch.cat(origins))
    return ContextBank(bank, torch.tensor(norms))
