"""The scales a texture is scored at, set up before any training: the working size chosen
on the validation set (working_size.py names the candidates), and per image scale the
untrained model (PCA of normal patches: mean, subspace U, layers = ISTA) with its bank of
normal codes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from . import patches
from .detector import Detector, Scale
from .mixing import validation_score
from .model import PrincipalAxes, UnfoldedISTA
from .resampling import downsample
from .training_data import at_size
from .typicality import MAX_BANK_CANDIDATES, MAX_CODE_RANK, build_bank
from .validation import ValidationSet
from .working_size import TIE, WorkingSize

MAX_PCA_ROWS = 200_000
SIZE_BANK_CANDIDATES = 20_000  # patch codes the banks of the candidate sizes are chosen from


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


def shape_at(validation: ValidationSet, size: WorkingSize, reference: WorkingSize) -> tuple[int, int]:
    """The validation images' (h, w) at working size `size` (they are at `reference`)."""
    height, width = validation.images.shape[-2:]
    if size.factor is None or reference.factor is None:
        return height, width
    ratio = size.factor / reference.factor
    return max(1, round(height * ratio)), max(1, round(width * ratio))


@dataclass
class SizeChoice:
    size: WorkingSize
    images: list[torch.Tensor]  # the fitting images at that size
    scales: list[Scale]  # untrained, built while comparing
    scores: dict[str, float]  # validation score of each candidate, by label


def choose_size(
    arrays: list[np.ndarray],
    channels: int,
    sizes: list[WorkingSize],
    validation: ValidationSet,
    config: Config,
    folder: Path,
    warn: Callable[[str], None],
) -> SizeChoice:
    """The candidate working size whose untrained models score best on the validation set
    (a larger one must win by more than TIE). The comparison uses code banks chosen among
    fewer candidate codes (SIZE_BANK_CANDIDATES); the chosen size's banks are then rebuilt."""
    best: tuple[WorkingSize, list[torch.Tensor]] | None = None
    best_score = -1.0
    scores = {}
    for size in sizes:
        images = at_size(arrays, channels, size, config.patch.size, folder)
        if len(sizes) > 1:
            factors = usable_factors(images, config, lambda message: None)
            scales = [init_scale(images, config, factor, SIZE_BANK_CANDIDATES) for factor in factors]
            shape = shape_at(validation, size, sizes[-1])
            scores[size.label] = score = validation_score(Detector(scales, config, channels), validation, shape)
        else:
            score = float("nan")
        if best is None or score > best_score + TIE:
            best, best_score = (size, images), score
    size, images = best  # type: ignore[misc]
    scales = [init_scale(images, config, factor) for factor in usable_factors(images, config, warn)]
    return SizeChoice(size, images, scales, scores)
