"""The decision threshold, from the image scores of normal images.

The scores come from every normal image scored as a new image would be (held-out images,
and training images against code banks without their own codes), not from the 20 % held
out alone: with 7 held-out images a 0.99 quantile is just their maximum, and one odd image
moves it. The threshold is a quantile of those scores times a margin; normalised scores
divide by it, so 1.0 is the threshold. The default takes the upper quartile (the bulk of
normal images; the top tail belongs to a few odd ones, e.g. unlabelled hairs on kolektor)
and a margin of 1.5 (new normal images of a line often score higher as a whole than the
training ones: on 4 of the 10 dev sets the good test images' median is 1.16-1.28x theirs).

Masks get their own, lower threshold: the pixel level that gives the best pixel F1 on the
validation defects. Within an anomalous image, the defect's flanks score below the image
threshold (which sits above the highest normal *image maximum*), so one threshold for
both cuts masks short.
"""

from __future__ import annotations

import torch

from ..scoring.detector import Detector
from ..scoring.postprocess import lower_median
from . import edges, levels
from .validation import ValidationSet

MAX_CALIBRATION_IMAGES = 200  # normal images whose maps set the edge damping and the threshold


def calibrate(scores: torch.Tensor, quantile: float, margin: float) -> float:
    """Threshold = the `quantile` of the normal image scores (n,) times `margin`."""
    return max(float(torch.quantile(scores.double(), quantile)) * margin, 1e-12)


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


def normal_examples(
    detector: Detector, fitting: list[torch.Tensor], held_out: list[torch.Tensor], seed: int
) -> list[tuple[Detector, torch.Tensor, int | None]]:
    """The normal images scored as a new image would be, as (detector, working-size image,
    fitting index or None): held-out images against the detector, each training image
    against code banks without its own codes (leave one out). Calibrating on all of them,
    not only the held-out share, steadies the threshold. At most MAX_CALIBRATION_IMAGES
    (every held-out image, then a seeded choice of training images), so time and memory
    stop growing with the number of normal images."""
    examples: list[tuple[Detector, torch.Tensor, int | None]] = [(detector, image, None) for image in held_out]
    numbers = list(range(len(fitting)))
    room = max(0, MAX_CALIBRATION_IMAGES - len(held_out))
    if len(numbers) > room:
        chosen = torch.randperm(len(numbers), generator=torch.Generator().manual_seed(seed + 7))[:room]
        numbers = sorted(chosen.tolist())
    examples += [(detector.without_image(number), fitting[number], number) for number in numbers]
    return examples[:MAX_CALIBRATION_IMAGES]


def calibrate_detector(
    detector: Detector,
    fitting: list[torch.Tensor],
    held_out: list[torch.Tensor],
    validation_maps: torch.Tensor,
    validation: ValidationSet,
    sizes: tuple[list[tuple[int, int]], list[tuple[int, int]]] | None = None,
) -> None:
    """Edge damping, level damping, image threshold and mask threshold, into
    detector.calibration. `sizes`: the input (height, width) of the fitting and held-out
    images (default: their working size). The image threshold is fitted on exactly the
    statistic detect computes for each normal image at its input size
    (Detector.score_image: the working-size map damped, resized back, scored)."""
    cfg = detector.config
    examples = normal_examples(detector, fitting, held_out, cfg.train.seed)
    fitting_sizes, held_sizes = sizes or (
        [tuple(t.shape[-2:]) for t in fitting],
        [tuple(t.shape[-2:]) for t in held_out],
    )
    input_sizes = [held_sizes[i] if n is None else fitting_sizes[n] for i, (_, _, n) in enumerate(examples)]
    work = [variant.working_map(image) for variant, image, _ in examples]  # undamped, at the working size
    coarsest = max(s.factor for s in detector.scales)
    width = edges.band_width(cfg.patch.size, coarsest, detector.smoothing_reach, min(min(m.shape) for m in work))
    calibration = detector.calibration
    calibration.level_reference, calibration.level_cap = None, 1.0
    calibration.edge_rows, calibration.edge_columns = edges.edge_profile([torch.from_numpy(m) for m in work], width)
    if cfg.score.level_damping:
        edged = detector.finish.damp_edges
        calibration.level_reference, calibration.level_cap = levels.level_reference(
            [float(lower_median(edged(m))) for m in work]
        )
    finish = detector.finish
    scores = torch.tensor([finish(m, size)[1] for m, size in zip(work, input_sizes, strict=True)], dtype=torch.float64)
    calibration.image_scores = scores.tolist()
    calibration.threshold = calibrate(scores, cfg.score.threshold_quantile, cfg.score.threshold_margin)
    damped = torch.stack([torch.from_numpy(finish.damp(m.detach().cpu().numpy())) for m in validation_maps])
    calibration.pixel_threshold = min(pixel_threshold(damped, validation), calibration.threshold)
