"""The decision threshold, from the image scores of normal images.

The scores come from every normal image scored as a new image would be (held-out images,
and training images against code banks without their own codes), not from the 20 % held
out alone: with 7 held-out images a 0.99 quantile is just their maximum, and one odd image
moves it. The threshold is a quantile of those scores times a margin; normalised scores
divide by it, so 1.0 is the threshold.

Masks get their own, lower threshold: the pixel level that gives the best pixel F1 on the
validation defects. Within an anomalous image, the defect's flanks score below the image
threshold (which sits above the highest normal *image maximum*), so one threshold for
both cuts masks short.
"""

from __future__ import annotations

import torch

from .validation import ValidationSet


def calibrate(scores: torch.Tensor, quantile: float, margin: float) -> dict[str, float | list[float]]:
    """Threshold = the `quantile` of the normal image scores (n,) times `margin`."""
    scores = scores.double()
    threshold = float(torch.quantile(scores, quantile)) * margin
    return {
        "threshold": max(threshold, 1e-12),
        "quantile": quantile,
        "margin": margin,
        "image_scores": scores.tolist(),
    }


def pixel_threshold(maps: torch.Tensor, validation: ValidationSet) -> float:
    """The map level with the best pixel F1 on the validation set ((n, h, w) maps of its
    images), each sampled pixel weighted by the number of pixels it stands for."""
    negatives, positives = validation.sample(maps)
    normal_weight, family_weights = validation.sample_weights()
    values = torch.cat([negatives, *positives.values()]).double()
    weights = torch.cat(
        [torch.full((len(negatives),), normal_weight, dtype=torch.float64)]
        + [torch.full((len(v),), family_weights[name], dtype=torch.float64) for name, v in positives.items()]
    )
    is_defect = torch.cat([torch.zeros(len(negatives))] + [torch.ones(len(v)) for v in positives.values()]).bool()
    order = values.argsort(descending=True)
    true_pos = torch.cumsum(weights[order] * is_defect[order], 0)
    false_pos = torch.cumsum(weights[order] * ~is_defect[order], 0)
    f1 = 2 * true_pos / (true_pos + false_pos + true_pos[-1])
    return float(values[order][int(f1.argmax())])
