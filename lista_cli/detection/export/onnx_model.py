"""Score images with an exported model (`lista export`) through ONNX Runtime.

Needs only onnxruntime, numpy and pillow (with lista_cli's imageio, regions, postprocess
and tiling, which use nothing else): no torch. The graph is the detector's traced forward
pass; before and after it this runs the same numpy functions as the PyTorch detector
(postprocess.prepare, tiling.TileRule, postprocess.Finish). `OnnxDetector` offers what the
batch runner uses of a checkpoint's Detector (channels, threshold, check_size,
detect_batch), so `lista detect MODEL.onnx` has the same outputs, batching, sharding and
error handling.

    from lista_cli.detection.export.onnx_model import OnnxDetector
    from lista_cli.io.imageio import read_image
    result = OnnxDetector("texture.onnx").detect_batch([read_image("part.png")])[0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ListaError
from ...io.imageio import ImageError, working_shape
from ..scoring.postprocess import Finish, prepare
from ..scoring.regions import Result, decide
from ..scoring.tiling import TileRule

FORMAT = "lista-onnx"
FORMAT_VERSION = 3  # 3: traced from the PyTorch forward pass; pre- and post-processing in numpy


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
        if version != FORMAT_VERSION:
            raise OnnxModelError(
                f"{path}: exported in format {version} by lista {meta.get('lista_version', '?')}; this lista reads"
                f" format {FORMAT_VERSION}: export the checkpoint again"
            )
        self.path = path
        self.metadata = meta
        self.channels = int(meta["channels"])
        self.image_size = int(meta["image_size"]) if meta["image_size"] else None
        self.working_scale = float(meta["working_scale"]) if meta["working_scale"] else None
        self.min_side = int(meta["min_side"])
        self.tile_rule = TileRule(*json.loads(meta["tile"]))
        self.finish = Finish.from_json(meta["finish"])
        self.min_region = int(meta["min_region"])
        self.model_threshold = float(meta["threshold"])
        self.threshold = self.model_threshold
        self._pixel_threshold = float(meta["pixel_threshold"])

    @property
    def config(self) -> dict[str, Any]:
        """The inference configuration the model was exported with."""
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

    def working_map(self, image: np.ndarray) -> np.ndarray:
        """(C, h, w) working-size image -> (h, w) undamped map, in tiles as tiling.py says."""
        image = image[None]

        def score(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            tile = np.ascontiguousarray(image[..., y0:y1, x0:x1])
            return self.session.run(["anomaly_map"], {"image": image, "tile": tile})[0]

        return self.tile_rule.apply(score, *image.shape[-2:])

    def run(self, array: np.ndarray) -> tuple[np.ndarray, float]:
        """(H, W, C) float image in [0, 1] -> (H, W) anomaly map and image score."""
        work = prepare(array, self.channels, self.image_size, self.working_scale)
        return self.finish(self.working_map(work), array.shape[:2])

    def detect_batch(self, arrays: list[np.ndarray]) -> list[Result]:
        """The result of each image, one at a time (as the checkpoint scores them)."""
        results = []
        for array in arrays:
            anomaly_map, score = self.run(array)
            results.append(decide(anomaly_map, score, self.threshold, self.pixel_threshold, self.min_region))
        return results
