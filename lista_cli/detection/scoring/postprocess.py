"""What happens outside the traced forward pass, written once in numpy for both runtimes.

Before it: the decoded image in the model's channels, resized to the working size with
PyTorch's antialiased bilinear weights as interpolation matrices (`prepare`). After it: the
working-size map damped at the edges and by its own level, resized back to the input's size
and its image score (`Finish`). The PyTorch detector, calibration and the ONNX runner all
call these functions, so no runtime has its own copy. Needs numpy only (no torch).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from ...io.imageio import to_channels, working_shape


def antialias_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) float32 weights of PyTorch's antialiased bilinear resize along one axis
    (F.interpolate(..., antialias=True, align_corners=False)): a triangle of half-width
    max(in / out, 1) around each output pixel's centre, normalised per output pixel."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    centre = scale * (np.arange(size_out, dtype=np.float64) + 0.5)
    offset = (np.arange(size_in, dtype=np.float64) + 0.5)[None, :] - centre[:, None]
    weights = np.maximum(1.0 - np.abs(offset / support), 0.0)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) float32 weights of a bilinear resize to a size, align_corners=False:
    source = max((i + 0.5) * in / out - 0.5, 0), between pixels floor(source) and the next."""
    scale = size_in / size_out
    source = np.maximum((np.arange(size_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    weight_high = source - low
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    np.add.at(matrix, (np.arange(size_out), low), 1 - weight_high)
    np.add.at(matrix, (np.arange(size_out), high), weight_high)
    return matrix.astype(np.float32)


def resize(planes: np.ndarray, size: tuple[int, int], matrix=bilinear_matrix) -> np.ndarray:
    """(..., h, w) float32 -> (..., size): rows, then columns, through `matrix` (one axis)."""
    height, width = planes.shape[-2:]
    rows, columns = matrix(height, size[0]), matrix(width, size[1])
    return np.ascontiguousarray((rows @ planes @ columns.T).astype(np.float32))


def prepare(array: np.ndarray, channels: int, image_size: int | None, factor: float | None = None) -> np.ndarray:
    """(H, W, C) float image in [0, 1] -> (channels, h, w) float32 at the model's resolution
    (antialiased resize, clipped to [0, 1], when the working size differs)."""
    planar = np.ascontiguousarray(np.moveaxis(to_channels(array, channels), -1, 0), dtype=np.float32)
    height, width = planar.shape[-2:]
    target = working_shape(height, width, image_size, factor)
    if target == (height, width):
        return planar
    return np.clip(resize(planar, target, antialias_matrix), 0.0, 1.0)


def lower_median(values: np.ndarray) -> np.float32:
    """The lower median of the values (an order statistic: every runtime finds the same one)."""
    flat = values.reshape(-1)
    middle = (flat.size + 1) // 2 - 1
    return np.partition(flat, middle)[middle]


def edge_divisors(length: int, profile: list[float]) -> np.ndarray:
    """(length,) divisor of each position at its distance from the nearer end (edges.py)."""
    position = np.arange(length)
    distance = np.minimum(np.minimum(position, length - 1 - position), len(profile))
    return np.asarray(list(profile) + [1.0], dtype=np.float32)[distance]


def image_score(anomaly_map: np.ndarray, mode: str = "max", top_k: float = 0.01) -> float:
    """The map's maximum, or the mean of its top `top_k` share of pixels."""
    flat = anomaly_map.reshape(-1)
    if mode == "max":
        return float(flat.max())
    count = max(1, round(top_k * flat.size))
    return float(np.partition(flat, flat.size - count)[flat.size - count :].mean(dtype=np.float64))


@dataclass
class Finish:
    """Working-size map -> map at the input's size and its image score: the edge damping
    (edges.py), the level damping (levels.py), the bilinear resize back and the image score."""

    edge_rows: list[float] = field(default_factory=list)
    edge_columns: list[float] = field(default_factory=list)
    level_reference: float | None = None
    level_cap: float = 1.0
    image_score: str = "max"
    top_k: float = 0.01

    def damp_edges(self, anomaly_map: np.ndarray) -> np.ndarray:
        """(h, w) map divided by the larger of the row and column divisors at each pixel."""
        rows, columns = self.edge_rows, self.edge_columns
        if not rows or (max(rows) <= 1.0 and max(columns) <= 1.0):
            return anomaly_map
        height, width = anomaly_map.shape
        divisor = np.maximum(edge_divisors(height, rows)[:, None], edge_divisors(width, columns)[None, :])
        return anomaly_map / divisor

    def damp_level(self, anomaly_map: np.ndarray) -> np.ndarray:
        """(h, w) map divided by clamp(its lower median / reference, 1, cap)."""
        if self.level_reference is None:
            return anomaly_map
        ratio = lower_median(anomaly_map) / np.float32(self.level_reference)
        return anomaly_map / np.clip(ratio, np.float32(1.0), np.float32(self.level_cap)).astype(np.float32)

    def damp(self, anomaly_map: np.ndarray) -> np.ndarray:
        return self.damp_level(self.damp_edges(anomaly_map))

    def __call__(self, work_map: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
        """(h, w) undamped working-size map -> ((H, W) map at the input's size, image score)."""
        anomaly_map = self.damp(np.asarray(work_map, dtype=np.float32))
        if anomaly_map.shape != tuple(size):
            anomaly_map = resize(anomaly_map, size)
        return anomaly_map, image_score(anomaly_map, self.image_score, self.top_k)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Finish:
        return cls(**json.loads(text))
