"""Score images with an exported model (`lista export`) through ONNX Runtime.

Needs only onnxruntime, numpy and pillow (with lista_cli's imageio and regions, which use
nothing else): no torch. `OnnxDetector` offers what the batch runner uses of a checkpoint's
Detector (channels, threshold, check_size, detect_batch), so `lista detect MODEL.onnx`
has the same outputs, batching, sharding and error handling.

    from lista_cli.detection.onnx_model import OnnxDetector
    from lista_cli.io.imageio import read_image
    result = OnnxDetector("texture.onnx").detect_batch([read_image("part.png")])[0]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ListaError
from ..io.imageio import ImageError, working_shape
from .regions import Result, decide

FORMAT = "lista-onnx"
FORMAT_VERSION = 2  # 2: the level damping (levels.py)


class OnnxModelError(ListaError):
    """An exported model that cannot be loaded, or a missing ONNX Runtime."""


class OnnxDetector:
    """An exported detector run by ONNX Runtime on the CPU (`threads` 0 = its default)."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise OnnxModelError(
                f"{path}: running an exported model needs onnxruntime: pip install 'lista-cli[onnx]'"
            ) from None
        path = Path(path)
        if path.is_dir():
            raise OnnxModelError(f"{path}: is a folder, not a model file")
        if not path.exists():
            raise OnnxModelError(f"{path}: model file not found")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no warnings on stderr
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise OnnxModelError(f"{path}: not a readable ONNX model ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format", "").split(" ")[0] != FORMAT:
            raise OnnxModelError(f"{path}: an ONNX model, but not one written by lista export")
        version = int(meta["format"].split(" ")[1])
        if version > FORMAT_VERSION:
            raise OnnxModelError(f"{path}: exported by a newer lista (format {version}); upgrade lista-cli")
        self.path = path
        self.metadata = meta
        self.channels = int(meta["channels"])
        self.image_size = int(meta["image_size"]) if meta["image_size"] else None
        self.working_scale = float(meta["working_scale"]) if meta["working_scale"] else None
        self.min_side = int(meta["min_side"])
        self.tile_size = int(meta["tile_size"])
        self.min_region = int(meta["min_region"])
        self.model_threshold = float(meta["threshold"])
        self.threshold = self.model_threshold
        self._pixel_threshold = float(meta["pixel_threshold"])
        # For images larger than a tile: the geometry of tiling.tiled_map, the edge damping
        # and the image score, read once.
        factors = json.loads(meta["factors"])
        patch, stride = json.loads(meta["patch"])
        grid = stride * math.lcm(*factors)
        self.tile = max(grid, self.tile_size // grid * grid)
        reach = meta.get("smoothing_reach") or math.ceil(3 * float(meta["smooth_sigma"]))  # older exports
        margin = 2 * patch * max(factors) + int(reach)
        self.margin = math.ceil(margin / grid) * grid
        self.edges = json.loads(meta["edges"])
        self.level = json.loads(meta.get("level", "[null, 1.0]"))  # format 1: no level damping
        self.image_score = json.loads(meta["image_score"])

    @property
    def config(self) -> dict[str, Any]:
        """The training configuration the model was exported with."""
        return json.loads(self.metadata["config"])

    @property
    def pixel_threshold(self) -> float:
        """Mask threshold (at most the image threshold, as for a checkpoint)."""
        return min(self._pixel_threshold, self.threshold)

    def override_threshold(self, threshold: float) -> None:
        """Use this image threshold instead of the exported one (for this run)."""
        self.threshold = threshold

    def check_size(self, array: np.ndarray, path: object) -> None:
        """Raise ImageError if the graph cannot score the image exactly: at the working size
        it must hold a patch at the coarsest scale; 1 or 3 channels."""
        height, width = working_shape(array.shape[0], array.shape[1], self.image_size, self.working_scale)
        if min(height, width) < self.min_side:
            raise ImageError(
                f"{path}: image is {array.shape[1]}x{array.shape[0]} px, {width}x{height} at model resolution;"
                f" the exported model needs at least {self.min_side} px on each side there"
            )
        if array.shape[-1] not in (1, 3):
            raise ImageError(f"{path}: {array.shape[-1]} channels; expected 1 (gray) or 3 (RGB)")

    def run(self, array: np.ndarray) -> tuple[np.ndarray, float]:
        """(H, W, C) float image in [0, 1] -> (H, W) anomaly map and image score; images
        larger than one tile at the working size are scored in tiles (`_tiled`)."""
        image = np.ascontiguousarray(array, dtype=np.float32)
        height, width = working_shape(array.shape[0], array.shape[1], self.image_size, self.working_scale)
        if max(height, width) > self.tile:
            return self._tiled(image)
        anomaly_map, score = self.session.run(["anomaly_map", "score"], {"image": image})
        return anomaly_map, float(score)

    def _tiled(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """tiling.tiled_map outside the graph: the graph gives the working-size image and its
        noise scales ("prepare"), then each tile's map ("tile"); the stitched map is damped at
        the edges, resized back and scored here as Detector.detect_batch does."""
        work, noise = self.session.run(["working_image", "noise_scales"], {"image": image, "prepare": np.array(True)})
        work = work[0].transpose(1, 2, 0)  # (h, w, C)
        height, width = work.shape[:2]
        tile, margin = self.tile, self.margin
        stitched = np.empty((height, width), dtype=np.float32)
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                y0, x0 = max(0, top - margin), max(0, left - margin)
                y1, x1 = min(height, top + tile + margin), min(width, left + tile + margin)
                feed = {"image": np.ascontiguousarray(work[y0:y1, x0:x1]), "noise": noise, "tile": np.array(True)}
                tile_map = self.session.run(["anomaly_map"], feed)[0]
                core_h, core_w = min(tile, height - top), min(tile, width - left)
                stitched[top : top + core_h, left : left + core_w] = tile_map[
                    top - y0 : top - y0 + core_h, left - x0 : left - x0 + core_w
                ]
        anomaly_map = damp_level(damp_edges(stitched, *self.edges), *self.level)
        if anomaly_map.shape != image.shape[:2]:
            anomaly_map = bilinear_resize(anomaly_map, image.shape[:2])
        return anomaly_map, image_score(anomaly_map, *self.image_score)

    def detect_batch(self, arrays: list[np.ndarray]) -> list[Result]:
        """The result of each image, one graph run each (maps are per image anyway)."""
        results = []
        for array in arrays:
            anomaly_map, score = self.run(array)
            results.append(decide(anomaly_map, score, self.threshold, self.pixel_threshold, self.min_region))
        return results


# --- what Detector.detect_batch does after tiling.tiled_map, in numpy (float32 as there) ---


def damp_edges(anomaly_map: np.ndarray, rows: list[float], columns: list[float]) -> np.ndarray:
    """edges.damp_edges: divide by the larger of the row and column divisors at each pixel's
    distance from the nearer edge."""
    if not rows or (max(rows) <= 1.0 and max(columns) <= 1.0):
        return anomaly_map

    def divisor(length: int, profile: list[float]) -> np.ndarray:
        position = np.arange(length)
        distance = np.minimum(np.minimum(position, length - 1 - position), len(profile))
        return np.asarray(profile + [1.0], dtype=np.float32)[distance]

    height, width = anomaly_map.shape
    return anomaly_map / np.maximum(divisor(height, rows)[:, None], divisor(width, columns)[None, :])


def damp_level(anomaly_map: np.ndarray, reference: float | None, cap: float) -> np.ndarray:
    """levels.damp_level: divide by clamp(the map's lower median / reference, 1, cap)."""
    if reference is None:
        return anomaly_map
    flat = anomaly_map.reshape(-1)
    middle = (flat.size + 1) // 2 - 1
    level = np.partition(flat, middle)[middle]
    divisor = np.clip(level / np.float32(reference), np.float32(1.0), np.float32(cap)).astype(np.float32)
    return anomaly_map / divisor


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) weights of F.interpolate(mode="bilinear", align_corners=False) to a size."""
    scale = np.float32(size_in) / np.float32(size_out)
    source = np.maximum((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    weight_high = (source - low).astype(np.float32)
    matrix = np.zeros((size_out, size_in), dtype=np.float32)
    np.add.at(matrix, (np.arange(size_out), low), 1 - weight_high)
    np.add.at(matrix, (np.arange(size_out), high), weight_high)
    return matrix


def bilinear_resize(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> size, bilinearly as Detector.detect_batch resizes a map back."""
    rows = _bilinear_matrix(anomaly_map.shape[0], size[0])
    columns = _bilinear_matrix(anomaly_map.shape[1], size[1])
    return (rows @ anomaly_map @ columns.T).astype(np.float32)


def image_score(anomaly_map: np.ndarray, mode: str, top_k: float) -> float:
    """scoring.image_scores: the maximum, or the mean of the top `top_k` share of pixels."""
    flat = anomaly_map.reshape(-1)
    if mode == "max":
        return float(flat.max())
    count = max(1, round(top_k * flat.size))
    return float(np.partition(flat, flat.size - count)[flat.size - count :].mean(dtype=np.float32))
