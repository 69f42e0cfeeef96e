"""How the component maps (per scale: sparse part S, code distance) are weighed into one map.

Each component is divided by its high quantile on normal pixels, so all share one unit,
"how far above normal". Then the S maps are weighted by a share t and the code maps by
1 - t. Which map carries a texture's defects differs (S on paper, the code distance on
periodic brick), so t is chosen on the validation set unless score.sparse_share fixes it.
"""

from __future__ import annotations

import torch

from . import scoring
from .pipeline import Detector
from .validation import ValidationSet

SPARSE_SHARES = (0.5, 0.25, 0.75, 0.1, 0.9, 0.0, 1.0)  # candidate mixes; the first wins ties


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


def share_weights(detector: Detector, levels: list[float], share: float) -> list[float]:
    """Map weights: each component's level, times `share` for sparse-part maps and
    1 - share for code and context maps."""
    kinds = detector.kinds
    return [level * (share if kind == "sparse" else 1.0 - share) for level, kind in zip(levels, kinds, strict=True)]


def choose_weights(
    detector: Detector, validation: ValidationSet, components: list[torch.Tensor]
) -> tuple[list[float], float, float]:
    """(weights, sparse share, validation score) of the best mix of the validation set's
    component maps (`components`, one per validation image, at the model's size)."""
    levels = component_levels([components[i] for i in validation.clean])
    fixed = detector.config.score.sparse_share
    if fixed is not None:
        shares = [fixed]
    elif any(kind != "sparse" for kind in detector.kinds):
        shares = SPARSE_SHARES
    else:
        shares = [1.0]
    # Smoothing is linear: smooth each component once, then every mix is a weighted sum
    # (the same maps as detector.combine up to rounding, at 1/7 of the smoothing cost).
    stacked = torch.stack(components)  # (n, M, h, w)
    sigma = detector.config.score.smooth_sigma
    smoothed = torch.stack([scoring.gaussian_smooth(stacked[:, i], sigma) for i in range(stacked.shape[1])], dim=1)
    best: tuple[list[float], float, float] | None = None
    for share in shares:
        weights = share_weights(detector, levels, share)
        maps = sum(smoothed[:, i] * w for i, w in enumerate(weights))
        score, _ = validation.score(maps)
        if best is None or score > best[2]:
            best = (weights, share, score)
    return best  # type: ignore[return-value]


def validation_score(detector: Detector, validation: ValidationSet, shape: tuple[int, int]) -> float:
    """The validation score of the detector's best mix, its images resized to `shape`."""
    return choose_weights(detector, validation, component_maps(detector, validation.resized(shape)))[2]
