"""Defect regions: the connected parts of a mask, with their box, size and scores.

Labelling works on runs of mask pixels along rows (vectorised), joining runs of
neighbouring rows that share a column (4-connectivity) with a union-find over runs, so its
cost grows with the number of runs, not with the number of pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

REGION_COLUMNS = ["x", "y", "width", "height", "area", "centroid_x", "centroid_y", "peak", "mean"]


class Region(NamedTuple):
    """One connected region of a mask, in the input image's pixels: bounding box (x, y of the
    top-left pixel, width, height), area in px, centroid and the map's peak and mean over it."""

    x: int
    y: int
    width: int
    height: int
    area: int
    centroid_x: float
    centroid_y: float
    peak: float
    mean: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            **{name: int(getattr(self, name)) for name in ("x", "y", "width", "height", "area")},
            "centroid_x": round(float(self.centroid_x), 2),
            "centroid_y": round(float(self.centroid_y), 2),
            "peak": round(float(self.peak), 6),
            "mean": round(float(self.mean), 6),
        }


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, first column and end column (exclusive) of every horizontal run of True, row-major."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)  # row-major too: pairs with the starts
    return rows, starts, ends


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a bool (H, W) mask -> (labels 1..n, 0 = background), n.
    Components are numbered in the order of their first pixel in a row-major scan."""
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    labels = np.zeros(mask.shape, dtype=np.int32)
    rows, starts, ends = _runs(mask)
    count = len(rows)
    if count == 0:
        return labels, 0
    parent = np.arange(count)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(height + 1))  # runs of row y: first[y]:first[y + 1]
    for y in range(1, height):
        i, i_end, j, j_end = first[y - 1], first[y], first[y], first[y + 1]
        while i < i_end and j < j_end:  # two runs touch when their column ranges overlap
            if starts[i] < ends[j] and starts[j] < ends[i]:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(count)])
    # Roots are each component's first run (unions keep the smaller index): number them in order.
    unique_roots = np.unique(roots)
    run_label = np.searchsorted(unique_roots, roots).astype(np.int32) + 1
    lengths = ends - starts
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    labels.ravel()[np.repeat(rows * width + starts, lengths) + offsets] = np.repeat(run_label, lengths)
    return labels, len(unique_roots)


def find_regions(anomaly_map: np.ndarray, mask: np.ndarray, min_area: int = 0) -> tuple[np.ndarray, list[Region]]:
    """The regions of `mask` (H, W bool) of at least `min_area` px, with their statistics on
    `anomaly_map` (H, W), largest peak first; and the mask of the regions kept."""
    labels, count = label_regions(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool), []
    ys, xs = np.nonzero(labels)
    which = labels[ys, xs] - 1
    values = anomaly_map[ys, xs].astype(np.float64)
    area = np.bincount(which, minlength=count)
    sums = np.bincount(which, weights=values, minlength=count)
    sum_y = np.bincount(which, weights=ys, minlength=count)
    sum_x = np.bincount(which, weights=xs, minlength=count)
    peak = np.full(count, -np.inf)
    np.maximum.at(peak, which, values)
    top, left = np.full(count, mask.shape[0]), np.full(count, mask.shape[1])
    bottom, right = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    np.minimum.at(top, which, ys)
    np.minimum.at(left, which, xs)
    np.maximum.at(bottom, which, ys)
    np.maximum.at(right, which, xs)
    kept = np.nonzero(area >= max(min_area, 1))[0]
    kept = kept[np.argsort(-peak[kept], kind="stable")]
    regions = [
        Region(
            int(left[k]),
            int(top[k]),
            int(right[k] - left[k] + 1),
            int(bottom[k] - top[k] + 1),
            int(area[k]),
            float(sum_x[k] / area[k]),
            float(sum_y[k] / area[k]),
            float(peak[k]),
            float(sums[k] / area[k]),
        )
        for k in kept
    ]
    keep = np.zeros(count + 1, dtype=bool)
    keep[kept + 1] = True
    return keep[labels], regions


class Result(NamedTuple):
    """Detection result of one image; `anomaly_map` and `mask` have the input's own height and
    width. The image is anomalous exactly when it has a region; the mask is the union of its
    regions (empty otherwise)."""

    score: float
    normalized_score: float
    anomalous: bool
    anomaly_map: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool
    regions: list[Region]


def decide(anomaly_map: np.ndarray, score: float, threshold: float, pixel_threshold: float, min_region: int) -> Result:
    """The decision on one (H, W) map at the input's own size whose image score is `score`.
    An image whose score reaches `threshold` gets the regions of its pixels at or above
    `pixel_threshold` that have at least `min_region` px; it is anomalous when at least one
    is left. Score, regions and mask all come from this one map."""
    normalized = score / threshold
    mask, regions = np.zeros(anomaly_map.shape, dtype=bool), []
    if normalized >= 1.0:
        mask, regions = find_regions(anomaly_map, anomaly_map >= pixel_threshold, min_region)
    return Result(score, normalized, bool(regions), anomaly_map, mask, regions)
