"""The decision threshold, from the image scores of normal images.

The scores come from every normal image scored as a new image would be (held-out images,
and training images against code banks without their own codes), not from the 20 % held
out alone: with 7 held-out images a 0.99 quantile is just their maximum, and one odd image
moves it. The threshold is a quantile of those scores times a margin; normalised scores
divide by it, so 1.0 is the threshold. The default takes the upper quartile (the bulk of
normal images; the top tail belongs to a few odd ones, e.g. unlabelled hairs on kolektor)
and a margin of 1.5 (new normal images of a line often score higher as a whole than the
training ones: on 4 of the 10 dev sets the good test images' median is 1.16-1.28x theirs).

Masks get their own, lower threshold: the pixel level that gives the best pixel F1 on
synthetic defects drawn into held-out image files (validation.mask_examples). Within an
anomalous image, the defect's flanks score below the image threshold (which sits above the
highest normal *image maximum*), so one threshold for both cuts masks short.

Both are fitted on what `lista detect` decides on: Detector.score_image of the image at its
input size (the working-size map damped, resized back, scored), the function detect calls.
The mask level takes a seeded sample of at most MASK_SAMPLE normal and MASK_SAMPLE defect
pixels of each map, each weighted by the pixels it stands for.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ..scoring.detector import Detector
from ..scoring.postprocess import lower_median
from . import edges, levels

MAX_CALIBRATION_IMAGES = 200  # normal images whose maps set the edge damping and the threshold
MASK_SAMPLE = 4096  # normal and defect pixels of each map the mask level is fitted on


def calibrate(scores: torch.Tensor, quantile: float, margin: float) -> float:
    """Threshold = the `quantile` of the normal image scores (n,) times `margin`."""
    return max(float(torch.quantile(scores.double(), quantile)) * margin, 1e-12)


def best_f1_level(values: np.ndarray, weights: np.ndarray, is_defect: np.ndarray) -> float:
    """The level v whose mask (values >= v) has the best weighted pixel F1 (the highest such
    level on a tie); `weights`: how many pixels each value stands for."""
    order = np.argsort(-values, kind="stable")
    values, weights, is_defect = values[order], weights[order], is_defect[order]
    true_pos = np.cumsum(weights * is_defect)
    false_pos = np.cumsum(weights * ~is_defect)
    f1 = 2 * true_pos / (true_pos + false_pos + true_pos[-1])
    last = np.append(values[1:] != values[:-1], True)  # a level keeps every value equal to it
    f1 = np.where(last, f1, -1.0)
    return float(values[int(f1.argmax())])


def pixel_sample(anomaly_map: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, weights, is_defect) of a seeded sample of at most MASK_SAMPLE normal and
    MASK_SAMPLE defect pixels of one map (all of them when there are fewer)."""
    rng = np.random.default_rng(seed)
    flat, defect = anomaly_map.reshape(-1), mask.reshape(-1)
    parts = []
    for chosen in (~defect, defect):
        index = np.flatnonzero(chosen)
        if len(index) > MASK_SAMPLE:
            index = np.sort(rng.choice(index, MASK_SAMPLE, replace=False))
        weight = np.full(len(index), chosen.sum() / max(len(index), 1), dtype=np.float64)
        parts.append((flat[index].astype(np.float64), weight, defect[index]))
    return tuple(np.concatenate(columns) for columns in zip(*parts, strict=True))


def mask_level(detector: Detector, examples: Iterable[tuple[np.ndarray, np.ndarray]], seed: int) -> float:
    """The mask level with the best pixel F1 on (image at its input size, defect mask)
    examples, each image's map the one detect computes (Detector.score_image)."""
    samples = []
    for number, (array, mask) in enumerate(examples):
        anomaly_map, _ = detector.score_image(detector.prepare(array), array.shape[:2])
        samples.append(pixel_sample(anomaly_map, mask, seed + number))
    values, weights, is_defect = (np.concatenate(columns) for columns in zip(*samples, strict=True))
    return best_f1_level(values, weights, is_defect)


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
    mask_examples: Iterable[tuple[np.ndarray, np.ndarray]],
    sizes: tuple[list[tuple[int, int]], list[tuple[int, int]]] | None = None,
) -> None:
    """Edge damping, level damping, image threshold and mask threshold, into
    detector.calibration. `sizes`: the input (height, width) of the fitting and held-out
    images (default: their working size); `mask_examples`: (input-size image, defect mask)
    pairs (validation.mask_examples). Both thresholds are fitted on exactly what detect
    computes for each image at its input size (Detector.score_image)."""
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
    level = mask_level(detector, mask_examples, cfg.train.seed)
    calibration.pixel_threshold = min(level, calibration.threshold)
