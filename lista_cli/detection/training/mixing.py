"""How the component maps (per scale: sparse part S, code distance, residual level) are
weighed into one map.

Each component is divided by its high quantile on normal pixels, so all share one unit,
"how far above normal". Then the S maps are weighted by a share t, the code
maps by 1 - t and the residual-level maps by u (1 - t), and each scale's maps by its scale's
weight: the finest scale (the one that places a defect to the pixel) weighs as much as all
coarser ones together or twice as much (a share f of the scale weights, a half or two
thirds), so the coarse scales added for context do not dilute it. Which map carries a
texture's defects differs (S on paper, the code distance on periodic brick, the residual
level where defects remove grain), and so does how much context they need (thin cracks: the
finest scale; pits and stochastic grain: the coarse ones), so t, u and f are chosen on the
validation set unless score.sparse_share and score.residual_weight fix t and u. So is the
smoothing of the S maps (score.sparse_smoothing): the Gaussian of the other maps, or that
plus their contrast along thin trails (pixel_maps.oriented_smooth).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..scoring import pixel_maps
from ..scoring.detector import Detector, Scale
from .validation import ValidationSet

SPARSE_SHARES = (0.5, 0.25, 0.75, 0.1, 0.9, 0.0, 1.0)  # candidate mixes; the first wins ties
RESIDUAL_WEIGHTS = (0.0, 0.5, 1.0)  # candidate weights u of the residual-level maps; off wins ties
SPARSE_SMOOTHINGS = ("gaussian", "oriented")  # candidate smoothings of the S maps; the first wins ties
FINEST_SHARES = (0.5, 2 / 3)  # candidate shares f of the finest scale in the scale weights; the first wins ties


@torch.inference_mode()
def component_maps(detector: Detector, images: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """Unsmoothed component maps (M, h, w) of each (C, h, w) image, one image at a time."""
    return [detector.component_maps(image[None])[0] for image in images]


def component_levels(normal_components: list[torch.Tensor], quantile: float = 0.99) -> list[float]:
    """1 / (the `quantile` of each component over normal pixels)."""
    pixels = torch.cat([c.flatten(1) for c in normal_components], dim=1)  # (M, pixels)
    if pixels.shape[1] > 1_000_000:
        pixels = pixels[:, :: -(-pixels.shape[1] // 1_000_000)]
    levels = torch.quantile(pixels.double(), quantile, dim=1)
    return [1.0 / max(float(level), 1e-6) for level in levels]


def scale_weights(detector: Detector, finest: float = 0.5) -> list[float]:
    """Per component map, its scale's weight: with n scales the finest gets n * `finest` and
    each of the n - 1 coarser ones n (1 - `finest`) / (n - 1), so the weights sum to n and,
    with the default half, two scales weigh 1 each."""
    count = len(detector.scales)
    weights = [1.0] if count == 1 else [count * finest] + [count * (1 - finest) / (count - 1)] * (count - 1)
    return [weight for weight, scale in zip(weights, detector.scales, strict=True) for _ in scale.kinds]


def share_weights(
    detector: Detector, levels: list[float], share: float, residual: float = 0.0, finest: float = 0.5
) -> list[float]:
    """Map weights: each component's level, times `share` for sparse-part maps,
    1 - share for code maps and `residual` (1 - share) for residual-level maps, times its
    scale's weight (scale_weights, the finest scale's share `finest`)."""
    factors = {"sparse": share, "code": 1.0 - share, "residual": residual * (1.0 - share)}
    return [
        level * factors[kind] * weight
        for level, kind, weight in zip(levels, detector.kinds, scale_weights(detector, finest), strict=True)
    ]


class Mix(NamedTuple):
    weights: list[float]
    sparse_share: float
    residual_weight: float
    score: float  # validation score
    sparse_smoothing: str = "gaussian"
    finest_share: float = 0.5  # the finest scale's share of the scale weights


class Samples(NamedTuple):
    """One component on the validation set: its level (1 / its 0.99 quantile on clean
    images) and its smoothed values at the set's sampled normal and defect pixels."""

    level: float
    negatives: torch.Tensor
    positives: dict[str, torch.Tensor]


def sample_components(
    detector: Detector, validation: ValidationSet, components: list[torch.Tensor], sparse_smoothing: str = "gaussian"
) -> list[Samples]:
    """Each component of the validation images' maps (`components`, one (M, h, w) per image)
    smoothed and sampled once: smoothing (per map, pixel_maps.smooth_mix), resizing to the
    reference size and sampling are linear in the weights, so a mix's samples are the
    weighted sums of these (the same values as sampling detector.combine's maps, up to rounding)."""
    levels = component_levels([components[i] for i in validation.clean])
    stacked = torch.stack(components)  # (n, M, h, w)
    sigma, code_sigma = detector.config.score.smooth_sigma, detector.config.score.code_smooth_sigma
    samples = []
    for i, (level, kind) in enumerate(zip(levels, detector.kinds, strict=True)):
        if kind == "sparse" and sparse_smoothing == "oriented":
            smoothed = pixel_maps.oriented_smooth(stacked[:, i], sigma)
        else:
            smoothed = pixel_maps.gaussian_smooth(stacked[:, i], pixel_maps.kind_sigma(kind, sigma, code_sigma))
        samples.append(Samples(level, *validation.sample(smoothed)))
    return samples


def best_mix(detector: Detector, validation: ValidationSet, samples: list[Samples]) -> Mix:
    """The mix of the components (their `samples`) with the best validation score."""
    score_cfg = detector.config.score
    if score_cfg.sparse_share is not None:
        shares = [score_cfg.sparse_share]
    elif any(kind != "sparse" for kind in detector.kinds):
        shares = SPARSE_SHARES
    else:
        shares = [1.0]
    if "residual" not in detector.kinds:
        residuals = [0.0]
    else:
        residuals = RESIDUAL_WEIGHTS if score_cfg.residual_weight is None else [score_cfg.residual_weight]
    finest_shares = FINEST_SHARES if len(detector.scales) > 1 else FINEST_SHARES[:1]
    levels = [sample.level for sample in samples]
    best: Mix | None = None
    for finest in finest_shares:
        for residual in residuals:
            for share in shares:
                weights = share_weights(detector, levels, share, residual, finest)
                negatives = sum(w * sample.negatives for w, sample in zip(weights, samples, strict=True))
                positives = {
                    name: sum(w * sample.positives[name] for w, sample in zip(weights, samples, strict=True))
                    for name in samples[0].positives
                }
                score, _ = validation.score_sample(negatives, positives)
                if best is None or score > best.score:
                    best = Mix(weights, share, residual, score, finest_share=finest)
    return best  # type: ignore[return-value]


def choose_weights(detector: Detector, validation: ValidationSet, components: list[torch.Tensor]) -> Mix:
    """The best mix and S-map smoothing of the validation set's component maps
    (`components`, one per validation image, at the model's size)."""
    choice = detector.config.score.sparse_smoothing
    smoothings = SPARSE_SMOOTHINGS if choice == "auto" else (choice,)
    best: Mix | None = None
    for smoothing in smoothings:
        mix = best_mix(detector, validation, sample_components(detector, validation, components, smoothing))
        if best is None or mix.score > best.score:
            best = mix._replace(sparse_smoothing=smoothing)
    return best  # type: ignore[return-value]


def validation_score(detector: Detector, validation: ValidationSet, shape: tuple[int, int]) -> float:
    """The validation score of the detector's best mix, its images resized to `shape`."""
    return choose_weights(detector, validation, component_maps(detector, validation.resized(shape))).score


class StepValidation:
    """Validation of one scale's training steps. Only the sparse map changes with the
    layers; the code and residual-level maps (the bank) do not, so their samples are taken
    once and each later validation runs the layers alone (same scores, less than half the time)."""

    def __init__(self, scale: Scale, validation: ValidationSet, shape: tuple[int, int], config, channels: int):
        self.whole = Detector([scale], config, channels)
        self.sparse_only = Detector([Scale(scale.factor, scale.model, None)], config, channels)
        self.validation, self.shape = validation, shape
        self.fixed: list[Samples] | None = None

    def score(self) -> float:
        images = self.validation.resized(self.shape)
        if self.fixed is None:
            samples = sample_components(self.whole, self.validation, component_maps(self.whole, images))
            self.fixed = samples[1:]
        else:
            sparse = sample_components(self.sparse_only, self.validation, component_maps(self.sparse_only, images))
            samples = sparse + self.fixed
        return best_mix(self.whole, self.validation, samples).score
