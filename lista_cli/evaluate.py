"""Evaluate a model on an MVTec-style category folder: per-kind and overall metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .dataset import TestImage, test_images
from .imageio import read_image
from .metrics import aupro, f1_at, f1_max, roc_auc
from .pipeline import Detector


def score_dataset(
    detector: Detector, root: Path, batch: int = 16
) -> tuple[list[TestImage], np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """-> (items, image scores (n,), maps [(H, W)], ground-truth masks [(H, W) bool])."""
    items = test_images(root)
    scores, maps, masks = [], [], []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        arrays = [read_image(item.path) for item in chunk]
        for item, array, result in zip(chunk, arrays, detector.detect_batch(arrays), strict=True):
            scores.append(result.score)
            maps.append(result.anomaly_map)
            masks.append(item.mask(array.shape[:2]))
    return items, np.array(scores), maps, masks


def metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    maps: list[np.ndarray],
    masks: list[np.ndarray],
    threshold: float,
    pixel_threshold: float,
) -> dict[str, Any]:
    """Image AUROC, pixel AUROC, AUPRO (FPR <= 0.3), F1-max (image, pixel) and F1 at the
    calibrated thresholds (pixels: the masks detect writes, empty in normal-scored images)."""
    pixel_labels = np.concatenate([m.ravel() for m in masks])
    pixel_scores = np.concatenate([m.ravel() for m in maps])
    predicted = np.concatenate(
        [(m >= pixel_threshold).ravel() & (s >= threshold) for m, s in zip(maps, scores, strict=True)]
    )
    image_f1, image_t = f1_max(labels, scores)
    pixel_f1, pixel_t = f1_max(pixel_labels, pixel_scores)
    return {
        "images": int(len(labels)),
        "anomalous": int(np.sum(labels)),
        "image_auroc": roc_auc(labels, scores),
        "pixel_auroc": roc_auc(pixel_labels, pixel_scores),
        "aupro": aupro(masks, maps),
        "image_f1_max": image_f1,
        "image_f1_threshold": image_t,
        "pixel_f1_max": pixel_f1,
        "pixel_f1_threshold": pixel_t,
        "image_f1_calibrated": f1_at(labels, scores, threshold),
        "pixel_f1_calibrated": f1_at(pixel_labels, predicted, True),
    }


def evaluate(detector: Detector, root: Path) -> dict[str, Any]:
    """Overall metrics and, per defect kind, the metrics on that kind plus the good images."""
    items, scores, maps, masks = score_dataset(detector, root)
    labels = np.array([item.is_anomalous for item in items])
    threshold, pixel_level = detector.threshold, detector.pixel_threshold
    report = {
        "dataset": str(root),
        "threshold": threshold,
        "pixel_threshold": pixel_level,
        **metrics(labels, scores, maps, masks, threshold, pixel_level),
    }
    report["good_flagged"] = float(np.mean(scores[~labels] >= threshold)) if (~labels).any() else float("nan")
    report["kinds"] = {}
    for kind in sorted({item.kind for item in items} - {"good"}):
        pick = [i for i, item in enumerate(items) if item.kind in (kind, "good")]
        report["kinds"][kind] = metrics(
            labels[pick], scores[pick], [maps[i] for i in pick], [masks[i] for i in pick], threshold, pixel_level
        )
    return report
