"""Detection metrics in numpy: AUROC, F1-max, AUPRO (checked against scikit-learn in tests)."""

from __future__ import annotations

import numpy as np

from ..scoring.regions import label_regions


def _flat(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in size: {labels.size} vs {scores.size}")
    return labels, scores


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney) formula, ties averaged.
    NaN when only one class is present."""
    labels, scores = _flat(labels, scores)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average rank (1-based) of each distinct value: end of its run minus half its ties.
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = average_rank[inverse][labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def _descending_counts(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None):
    """Cumulative (true, false) weights at each distinct score, scores sorted high to low."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    positive = labels[order].astype(np.float64) if weights is None else weights[order]
    negative = (~labels[order]).astype(np.float64)
    # Keep the last index of each run of equal scores: a threshold admits all of its ties.
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], sorted_scores.size - 1]
    return np.cumsum(positive)[last], np.cumsum(negative)[last], sorted_scores[last]


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds (score >= t is positive) and that threshold."""
    labels, scores = _flat(labels, scores)
    positives = labels.sum()
    if positives == 0:
        return float("nan"), float("nan")
    true_pos, false_pos, thresholds = _descending_counts(labels, scores)
    f1 = 2 * true_pos / (true_pos + false_pos + positives)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """F1 of the decision score >= threshold."""
    labels, scores = _flat(labels, scores)
    predicted = scores >= threshold
    true_pos = np.sum(predicted & labels)
    denominator = predicted.sum() + labels.sum()
    return float(2 * true_pos / denominator) if denominator else float("nan")


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr` (MVTec AD).

    PRO(t) is the mean over all ground-truth regions (4-connected, over all images) of the
    share of the region's pixels with score >= t; FPR(t) is over all normal pixels."""
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} maps")
    weights, labels, scores = [], [], []
    per_image = [label_regions(mask) for mask in masks]
    regions = sum(count for _, count in per_image)
    if regions == 0:
        return float("nan")
    for (components, count), mask, score_map in zip(per_image, masks, maps, strict=True):
        sizes = np.bincount(components.ravel(), minlength=count + 1).astype(np.float64)
        weight = np.where(components > 0, 1.0 / (sizes[components] * regions), 0.0)
        weights.append(weight.ravel())
        labels.append(np.asarray(mask, dtype=bool).ravel())
        scores.append(np.asarray(score_map, dtype=np.float64).ravel())
    labels_all = np.concatenate(labels)
    if labels_all.all():
        return float("nan")
    pro, false_pos, _ = _descending_counts(labels_all, np.concatenate(scores), np.concatenate(weights))
    fpr = np.r_[0.0, false_pos / (~labels_all).sum()]
    pro = np.r_[0.0, pro]
    # Integrate PRO over FPR in [0, max_fpr], interpolating the curve at max_fpr.
    cut = np.searchsorted(fpr, max_fpr, side="right")
    if cut < fpr.size:
        end = np.interp(max_fpr, fpr[cut - 1 : cut + 1], pro[cut - 1 : cut + 1])
        fpr, pro = np.r_[fpr[:cut], max_fpr], np.r_[pro[:cut], end]
    area = float(np.sum((fpr[1:] - fpr[:-1]) * (pro[1:] + pro[:-1]) / 2))
    return area / max_fpr
