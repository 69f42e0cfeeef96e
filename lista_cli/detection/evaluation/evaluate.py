"""Evaluate a model on an MVTec-style category folder: per-kind and overall metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...io.dataset import TestImage, test_images
from ...io.imageio import read_image
from ..scoring.detector import Detector
from ..scoring.regions import label_regions
from .metrics import aupro, f1_at, f1_max, roc_auc

# Metrics of an eval table (cli) and report (report.py), with their column titles.
EVAL_COLUMNS = {
    "images": "images",
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "image_f1_max": "image F1-max",
    "pixel_f1_max": "pixel F1-max",
    "image_f1_calibrated": "image F1@thr",
    "pixel_f1_calibrated": "pixel F1@thr",
}


def score_dataset(
    detector: Detector, root: Path, batch: int = 16
) -> tuple[list[TestImage], np.ndarray, list[np.ndarray], list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """-> (items, image scores (n,), maps [(H, W)], ground-truth masks [(H, W) bool],
    anomalous decisions (n,) and predicted masks [(H, W) bool], as detect writes them)."""
    items = test_images(root)
    scores, maps, masks, decisions, predicted = [], [], [], [], []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        arrays = [read_image(item.path) for item in chunk]
        for item, array, result in zip(chunk, arrays, detector.detect_batch(arrays), strict=True):
            scores.append(result.score)
            maps.append(result.anomaly_map)
            masks.append(item.mask(array.shape[:2]))
            decisions.append(result.anomalous)
            predicted.append(result.mask)
    return items, np.array(scores), maps, masks, np.array(decisions, dtype=bool), predicted


def metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    maps: list[np.ndarray],
    masks: list[np.ndarray],
    decisions: np.ndarray,
    predicted: list[np.ndarray],
) -> dict[str, Any]:
    """Image AUROC, pixel AUROC, AUPRO (FPR <= 0.3), F1-max (image, pixel) and F1 of the
    model's own decisions (images flagged anomalous; pixels in the masks detect writes)."""
    pixel_labels = np.concatenate([m.ravel() for m in masks])
    pixel_scores = np.concatenate([m.ravel() for m in maps])
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
        "image_f1_calibrated": f1_at(labels, decisions, True),
        "pixel_f1_calibrated": f1_at(pixel_labels, np.concatenate([m.ravel() for m in predicted]), True),
    }


def region_metrics(
    detector: Detector, maps: list[np.ndarray], masks: list[np.ndarray], min_region: int | None = None
) -> dict[str, float]:
    """How the predicted regions (as detect draws them) meet the ground truth: the share of
    ground-truth regions (4-connected) that a predicted region touches, the predicted
    regions per good image, and per image the predicted regions that touch no defect."""
    truth, hit, false_regions, good_regions, good_images = 0, 0, 0, 0, 0
    for score_map, mask in zip(maps, masks, strict=True):
        result = detector.decide(score_map, min_region)
        labels, count = label_regions(mask)
        truth += count
        hit += len(np.setdiff1d(np.unique(labels[result.mask]), [0]))
        predicted, predicted_count = label_regions(result.mask)
        touching = len(np.setdiff1d(np.unique(predicted[mask]), [0]))
        false_regions += predicted_count - touching
        if not mask.any():
            good_images += 1
            good_regions += predicted_count
    return {
        "region_recall": hit / truth if truth else float("nan"),
        "regions_per_good_image": good_regions / good_images if good_images else float("nan"),
        "false_regions_per_image": false_regions / max(len(maps), 1),
    }


def evaluate(detector: Detector, root: Path, scored: tuple | None = None) -> dict[str, Any]:
    """Overall metrics and, per defect kind, the metrics on that kind plus the good images.
    `scored`: score_dataset's output for this detector and folder, if already computed."""
    items, scores, maps, masks, decisions, predicted = scored or score_dataset(detector, root)
    labels = np.array([item.is_anomalous for item in items])
    report = {
        "dataset": str(root),
        "threshold": detector.threshold,
        "pixel_threshold": detector.pixel_threshold,
        "min_region": detector.config.score.min_region,
        **metrics(labels, scores, maps, masks, decisions, predicted),
    }
    report["good_flagged"] = float(np.mean(decisions[~labels])) if (~labels).any() else float("nan")
    report.update(region_metrics(detector, maps, masks))
    report["image_scores"] = [
        {"image": str(item.path), "kind": item.kind, "score": float(score), "anomalous": bool(decision)}
        for item, score, decision in zip(items, scores, decisions, strict=True)
    ]
    report["kinds"] = {}
    for kind in sorted({item.kind for item in items} - {"good"}):
        pick = [i for i, item in enumerate(items) if item.kind in (kind, "good")]
        report["kinds"][kind] = metrics(
            labels[pick],
            scores[pick],
            [maps[i] for i in pick],
            [masks[i] for i in pick],
            decisions[pick],
            [predicted[i] for i in pick],
        )
    return report
