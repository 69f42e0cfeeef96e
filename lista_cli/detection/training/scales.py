"""The scales a texture is scored at, set up before any training: per image scale the
untrained model (PCA of normal patches: mean, subspace U, layers = ISTA) with its bank of
normal codes."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...config import Config
from ..model import patches
from ..model.model import PrincipalAxes, UnfoldedISTA
from ..model.typicality import MAX_BANK_CANDIDATES, MAX_CODE_RANK, build_bank
from ..scoring.detector import Scale
from ..scoring.resampling import downsample

MAX_PCA_ROWS = 200_000


def init_scale(images: list[torch.Tensor], config: Config, factor: int, candidates: int = MAX_BANK_CANDIDATES) -> Scale:
    """The untrained model (PCA of normal patches: mean, subspace U, layers = ISTA) and the
    code bank of one image scale (its coreset chosen among `candidates` patch codes), from
    the training images downsampled by `factor`."""
    cfg = config
    rng = torch.Generator().manual_seed(cfg.train.seed + factor - 1)
    small = [downsample(t[None], factor)[0] for t in images]
    p, stride = cfg.patch.size, cfg.patch.stride
    rows = torch.cat([patches.unfold(t[None], p, stride)[0] for t in small if min(t.shape[-2:]) >= p])  # (n, d)
    if len(rows) > MAX_PCA_ROWS:
        rows = rows[torch.randperm(len(rows), generator=rng)[:MAX_PCA_ROWS]]
    axes = PrincipalAxes(rows)
    basis = axes.basis(cfg.model.energy, cfg.model.max_rank)
    model = UnfoldedISTA(axes.mean.float(), basis, cfg.model)
    scale = Scale(factor, model)
    if cfg.score.bank_size:  # the codes do not depend on the layers: built once
        code_basis = axes.basis(cfg.score.code_energy, MAX_CODE_RANK)
        scale.bank = build_bank(
            model.mean, code_basis, small, cfg.score.bank_size, p, cfg.train.seed, candidates, subspace=model.basis
        )
    return scale


def usable_factors(images: list[torch.Tensor], config: Config, warn: Callable[[str], None]) -> list[int]:
    """The configured image scales at which the largest training image still holds a patch."""
    factors = []
    largest = max(min(t.shape[-2:]) for t in images)
    for factor in config.data.scales:
        side = -(-largest // factor)  # ceil: downsample() keeps partial blocks
        if side < config.patch.size:
            warn(
                f"scale 1/{factor} skipped: the training images are at most {side} px"
                f" on a side there, smaller than the patch size {config.patch.size}"
            )
            continue
        factors.append(factor)
    return factors
