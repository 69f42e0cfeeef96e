"""Evaluate a model on an MVTec-style category folder: per-kind and overall metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .dataset import test_images
from .imageio import read_image
from .metrics import roc_auc
from .pipeline import Detector


def score_dataset(detector: Detector, root: Path, batch: int = 16):
    """-> (items, scores (n,), maps list of (H, W), masks list of (H, W) bool)."""
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


def _metrics(labels: np.ndarray, scores: np.ndarray, maps: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, Any]:
    return {
        "images": int(len(labels)),
        "image_auroc": roc_auc(labels, scores),
        "pixel_auroc": roc_auc(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])),
    }


def evaluate(detector: Detector, root: Path) -> dict[str, Any]:
    """Overall metrics and, per defect kind, metrics on that kind plus the good images."""
    items, scores, maps, masks = score_dataset(detector, root)
    labels = np.array([item.is_anomalous for item in items])
    report = _metrics(labels, scores, maps, masks)
    kinds = sorted({item.kind for item in items} - {"good"})
    report["kinds"] = {}
    for kind in kinds:
        pick = [i for i, item in enumerate(items) if item.kind in (kind, "good")]
        report["kinds"][kind] = _metrics(labels[pick], scores[pick], [maps[i] for i in pick], [masks[i] for i in pick])
    return report
