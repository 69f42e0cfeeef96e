"""`lista threshold`: set a model's image and mask thresholds from example images.

From normal images alone, `max_fpr` caps the share of them that are flagged: the threshold
is the lowest that flags at most floor(max_fpr * n) of the n images. From an MVTec-style
folder (test/good, test/<kind>, ground_truth/<kind>), `target` asks for the best image F1
("f1") or a recall ("recall=0.95": the highest threshold that finds that share of the
defective images), optionally under `max_fpr` on the good ones. The mask threshold is then
the map level with the best pixel F1 on the folder's images (at most the image threshold);
from normal images alone it keeps its ratio to the image threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import ListaError
from ...io.dataset import test_images
from ...io.imageio import ImageError, read_image
from ...io.inputs import collect_inputs
from ..scoring.checkpoint import load_checkpoint, save_checkpoint
from ..scoring.detector import Detector
from .metrics import f1_max

MAX_PIXELS = 2_000_000  # pixels sampled for the mask threshold's F1


class ThresholdError(ListaError):
    """Examples that cannot set a threshold (exit code 1)."""


@dataclass
class Target:
    kind: str  # "f1" or "recall"
    value: float | None = None  # the recall asked for


def parse_target(text: str | None) -> Target | None:
    """'f1' or 'recall=R' (0 < R <= 1) -> Target; None -> None."""
    if text is None:
        return None
    if text == "f1":
        return Target("f1")
    name, _, value = text.partition("=")
    if name == "recall":
        try:
            recall = float(value)
        except ValueError:
            recall = float("nan")
        if 0 < recall <= 1:
            return Target("recall", recall)
    raise ThresholdError(f"--target {text}: expected f1 or recall=R with 0 < R <= 1")


@dataclass
class Examples:
    """Scores of the example images, with maps and masks when the folder has defect masks."""

    normal: np.ndarray  # image scores of normal images
    defective: np.ndarray  # image scores of defective images (may be empty)
    maps: list[np.ndarray]  # every map, only for a labelled folder (the mask threshold)
    masks: list[np.ndarray]


def score_examples(detector: Detector, folder: Path, batch: int = 16) -> Examples:
    """Score an MVTec-style folder (when it has test/) or every image under `folder` as normal."""
    folder = Path(folder)
    if (folder / "test").is_dir():
        items = test_images(folder)
        labelled = [(item.path, item.is_anomalous, item) for item in items]
    else:
        found = collect_inputs([str(folder)]).images
        labelled = [(item.path, False, None) for item in found]
    if not labelled:
        raise ThresholdError(f"{folder}: no images")
    normal, defective, maps, masks = [], [], [], []
    keep_maps = any(is_defect for _, is_defect, _ in labelled)
    for start in range(0, len(labelled), batch):
        chunk = labelled[start : start + batch]
        arrays = []
        for path, _, _ in chunk:
            try:
                arrays.append(read_image(path))
            except ImageError as exc:
                raise ThresholdError(str(exc)) from None
        for (_, is_defect, item), array, result in zip(chunk, arrays, detector.detect_batch(arrays), strict=True):
            (defective if is_defect else normal).append(result.score)
            if keep_maps:
                maps.append(result.anomaly_map)
                masks.append(item.mask(array.shape[:2]))
    return Examples(np.array(normal), np.array(defective), maps, masks)


def lowest_threshold_for_fpr(normal: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold that flags at most k = floor(max_fpr * n) of the n normal scores:
    just above the highest score that must stay unflagged (by 1e-6 of it, and at most half
    way to the next higher score; a relative step, since flushed denormals could make the
    next float equal to 0)."""
    allowed = math.floor(max_fpr * len(normal) + 1e-9)
    ranked = np.sort(normal)[::-1]
    if allowed >= len(ranked):
        return float(ranked[-1])
    kept = ranked[allowed]  # the highest score that must stay below the threshold
    step = max(abs(kept), 1.0) * 1e-6
    above = ranked[ranked > kept]
    if len(above):
        step = min(step, (above.min() - kept) / 2)
    return float(kept + step)


def highest_threshold_for_recall(defective: np.ndarray, recall: float) -> float:
    """The highest threshold that finds at least ceil(recall * m) of the m defect scores."""
    needed = max(1, math.ceil(recall * len(defective) - 1e-9))
    return float(np.sort(defective)[::-1][needed - 1])


def choose(examples: Examples, max_fpr: float | None, target: Target | None) -> float:
    """The image threshold that meets `max_fpr` and `target` (see the module docstring)."""
    normal, defective = examples.normal, examples.defective
    if max_fpr is not None and not len(normal):
        raise ThresholdError("--max-fpr needs normal images, and the folder has none")
    if target is not None and not len(defective):
        raise ThresholdError(f"--target {target.kind} needs defective images (test/<kind> with ground_truth masks)")
    floor = lowest_threshold_for_fpr(normal, max_fpr) if max_fpr is not None else -np.inf
    if target is None:
        return floor
    if target.kind == "recall":
        threshold = highest_threshold_for_recall(defective, target.value)
        if threshold < floor:
            raise ThresholdError(
                f"recall {target.value:g} and --max-fpr {max_fpr:g} cannot both be met: recall needs a threshold"
                f" of at most {threshold:.6g}, the false-positive cap one of at least {floor:.6g}"
            )
        return threshold
    floor = max(floor, float(min(normal.min(initial=np.inf), defective.min())))  # flags all at most
    candidates = np.unique(np.r_[defective[defective >= floor], floor])  # every distinct outcome
    if not (defective >= floor).any():
        raise ThresholdError(f"--max-fpr {max_fpr:g} leaves no defective image found: F1 cannot be met")
    found = len(defective) - np.searchsorted(np.sort(defective), candidates, side="left")
    flagged = len(normal) - np.searchsorted(np.sort(normal), candidates, side="left")
    f1 = 2 * found / (found + flagged + len(defective))
    return float(candidates[int(np.argmax(f1))])


def pixel_threshold(examples: Examples, threshold: float, old: Detector) -> float:
    """Best pixel F1 on the labelled maps, at most `threshold`; without masks the model's
    mask threshold keeps its ratio to the image threshold."""
    if not examples.masks or not any(mask.any() for mask in examples.masks):
        return old.pixel_threshold * threshold / old.threshold
    values = np.concatenate([m.ravel() for m in examples.maps])
    labels = np.concatenate([m.ravel() for m in examples.masks])
    if len(values) > MAX_PIXELS:  # a seeded sample keeps the F1 curve and the memory small
        pick = np.random.default_rng(0).choice(len(values), MAX_PIXELS, replace=False)
        values, labels = values[pick], labels[pick]
    _, level = f1_max(labels, values)
    return float(min(level, threshold))


@dataclass
class ThresholdReport:
    threshold: float
    pixel_threshold: float
    previous_threshold: float
    previous_pixel_threshold: float
    normal_images: int
    normal_flagged: int
    defective_images: int
    defective_found: int

    @property
    def fpr(self) -> float:
        return self.normal_flagged / self.normal_images if self.normal_images else float("nan")

    @property
    def recall(self) -> float:
        return self.defective_found / self.defective_images if self.defective_images else float("nan")


def set_thresholds(
    model: Path, folder: Path, out: Path, max_fpr: float | None, target: Target | None, device: str = "cpu"
) -> ThresholdReport:
    """Choose the thresholds on `folder` and write `model` with them to `out` (atomically)."""
    if max_fpr is None and target is None:
        raise ThresholdError("give --max-fpr, --target or both")
    if max_fpr is not None and not 0 <= max_fpr < 1:
        raise ThresholdError(f"--max-fpr {max_fpr:g}: expected a rate in [0, 1)")
    detector = load_checkpoint(model, device)
    examples = score_examples(detector, folder)
    threshold = choose(examples, max_fpr, target)
    level = pixel_threshold(examples, threshold, detector)
    previous = detector.threshold, detector.pixel_threshold
    detector.calibration.threshold, detector.calibration.pixel_threshold = threshold, level
    extra = torch.load(model, map_location="cpu", weights_only=True).get("extra")  # what training recorded
    save_checkpoint(out, detector, extra)  # atomically, in the current format
    return ThresholdReport(
        threshold=threshold,
        pixel_threshold=level,
        previous_threshold=previous[0],
        previous_pixel_threshold=previous[1],
        normal_images=len(examples.normal),
        normal_flagged=int((examples.normal >= threshold).sum()),
        defective_images=len(examples.defective),
        defective_found=int((examples.defective >= threshold).sum()),
    )
