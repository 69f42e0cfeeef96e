"""`lista export`: a trained detector as one ONNX graph that scores like `lista detect`.

The graph holds everything between a decoded image and its map: channel conversion, the
resize to the model's working size, every image scale (block means, patches, the unfolded
layers, the code-bank search, the residual levels), the map mix, smoothing, edge damping and
the resize back, the image score and both thresholds (as outputs). Height and width are
dynamic. Each step is written with the same arithmetic as the PyTorch code path, not with a
look-alike operator: ONNX's antialiased Resize, for one, weighs pixels differently from
PyTorch's (up to 0.05 on an image in [0, 1]), so resizes are products with interpolation
matrices built in the graph from the image's size, with PyTorch's formulas.

What the graph cannot express exactly is refused (`unsupported`), never approximated.
Images larger than one tile at the working size are refused by the runner (onnx_model.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ListaError
from ..io.imageio import atomic_write
from .detector import Detector
from .onnx_graph import Graph, antialias_matrix, bilinear_matrix, crop, resize
from .onnx_layers import scale_maps
from .scoring import gaussian_kernel

OPSET = 18
FORMAT = "lista-onnx"
FORMAT_VERSION = 1
INT64_MAX = 2**63 - 1
LUMA = (0.299, 0.587, 0.114)  # imageio.to_channels: RGB to gray by ITU-R 601 luma


class ExportError(ListaError):
    """A model the export cannot express exactly, or a missing ONNX package."""


def require_onnx() -> None:
    """Raise ExportError with one line when the optional ONNX packages are missing."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("exporting needs the onnx package: pip install 'lista-cli[onnx]'") from None


def unsupported(detector: Detector) -> str | None:
    """Why this detector cannot be exported exactly, or None when it can."""
    if detector.context is not None:
        return "score.context is on (the stacked-code context bank has no exact ONNX form here)"
    for scale in detector.scales:
        if scale.model.background != "global":
            return f"model.background is {scale.model.background!r} (only 'global' exports)"
    if detector.config.score.image_score not in ("max", "topk"):
        return f"score.image_score {detector.config.score.image_score!r}"
    return None


def _working_size(g: Graph, detector: Detector, height: str, width: str) -> tuple[str, str] | None:
    """The working height and width (int64 scalars) as imageio.working_shape computes them
    (in double precision, rounding half to even like Python's round), or None: no resize."""
    from onnx import TensorProto

    size = detector.config.data.image_size
    if detector.working_scale == 1.0:  # round(side * 1.0) = side: PyTorch skips the resize too
        return None
    if detector.working_scale is not None:
        factor = g.const(detector.working_scale, np.float64)
    elif isinstance(size, int):
        factor = g.op("Div", g.const(size, np.float64), g.scalar(g.op("Min", height, width), TensorProto.DOUBLE))
    else:
        return None

    def scaled(side: str) -> str:
        rounded = g.op("Round", g.op("Mul", g.scalar(side, TensorProto.DOUBLE), factor))
        return g.op("Max", g.scalar(rounded, TensorProto.INT64), g.const(1, np.int64))

    return scaled(height), scaled(width)


def _edge_divisor(g: Graph, length: str, profile: list[float]) -> str:
    """(length,) divisor at each position's distance from the nearer end (edges.damp_edges)."""
    position = g.op("Range", g.const(0, np.int64), length, g.const(1, np.int64))
    distance = g.op("Min", position, g.op("Sub", g.op("Sub", length, g.const(1, np.int64)), position))
    distance = g.op("Min", distance, g.const(len(profile), np.int64))
    return g.op("Gather", g.const(profile + [1.0]), distance)


def _input_image(g: Graph, detector: Detector) -> tuple[str, tuple[str, str] | None]:
    """The graph input "image" (H, W, 1 or 3) -> (1, C, h, w) at the working size, and the
    working (h, w) or None when it is the input's (Detector.prepare)."""
    expanded = g.op("Expand", "image", g.i64(1, 1, 3))  # (H, W, 1) or (H, W, 3) -> (H, W, 3)
    if detector.channels == 3:
        image = expanded
    else:  # gray input as it is, colour by luma
        luma = g.op("MatMul", expanded, g.const(np.array(LUMA, dtype=np.float32)[:, None]))
        first = g.op("Slice", "image", g.i64(0), g.i64(1), g.i64(2))  # the gray channel when C = 1
        image = g.op("Where", g.op("Equal", g.dim("image", 2), g.const(1, np.int64)), first, luma)
    image = g.op("Unsqueeze", g.op("Transpose", image, perm=[2, 0, 1]), g.i64(0))  # (1, C, H, W)
    height, width = g.dim("image", 0), g.dim("image", 1)
    size = _working_size(g, detector, height, width)
    if size is not None:
        resized = resize(g, image, height, width, *size, antialias_matrix)
        image = g.op("Clip", resized, g.const(0.0), g.const(1.0))
    return image, size


def _smoothed_map(g: Graph, detector: Detector, image: str) -> str:
    """(1, C, h, w) -> (1, 1, h, w): every scale's component maps, weighted, summed and
    smoothed (Detector.anomaly_maps)."""
    components = []
    for scale in detector.scales:
        if scale.factor == 1:
            components += scale_maps(g, detector, scale, image)
            continue
        small = g.op("AveragePool", image, kernel_shape=[scale.factor] * 2, strides=[scale.factor] * 2, ceil_mode=1)
        coarse = g.op("Concat", *scale_maps(g, detector, scale, small), axis=1)
        factors = g.const([1.0, 1.0, float(scale.factor), float(scale.factor)])
        fine = g.op("Resize", coarse, "", factors, mode="linear", coordinate_transformation_mode="half_pixel")
        fine = crop(g, fine, g.dim(image, 2), g.dim(image, 3))
        components += [g.op("Slice", fine, g.i64(i), g.i64(i + 1), g.i64(1)) for i in range(len(scale.kinds))]
    raw = None
    for component, weight in zip(components, detector.map_weights, strict=True):
        term = g.op("Mul", component, g.const(weight))
        raw = term if raw is None else g.op("Add", raw, term)
    sigma = detector.config.score.smooth_sigma
    if sigma > 0:  # separable Gaussian with reflected borders (scoring.gaussian_smooth)
        kernel = gaussian_kernel(sigma)
        radius = len(kernel) // 2
        padded = g.op("Pad", raw, g.i64(0, 0, radius, radius, 0, 0, radius, radius), mode="reflect")
        raw = g.op("Conv", g.op("Conv", padded, g.const(kernel.view(1, 1, 1, -1))), g.const(kernel.view(1, 1, -1, 1)))
    return raw


def _image_score(g: Graph, detector: Detector, anomaly_map: str) -> str:
    """The map's maximum, or the mean of its top share (scoring.image_scores)."""
    if detector.config.score.image_score == "max":
        return g.op("ReduceMax", anomaly_map, keepdims=0)
    from onnx import TensorProto

    flat = g.op("Reshape", anomaly_map, g.i64(-1))
    share = g.const(detector.config.score.top_k, np.float64)
    wanted = g.op("Round", g.op("Mul", g.scalar(g.op("Size", flat), TensorProto.DOUBLE), share))
    count = g.op("Max", g.scalar(wanted, TensorProto.INT64), g.const(1, np.int64))
    top = g.op("TopK", flat, g.op("Unsqueeze", count, g.i64(0)), outputs=2, largest=1, sorted=1)[0]
    return g.op("ReduceMean", top, keepdims=0)


def build(detector: Detector):
    """The detector as an onnx.ModelProto (raises ExportError if it cannot be exact)."""
    require_onnx()
    from onnx import TensorProto, helper

    reason = unsupported(detector)
    if reason is not None:
        raise ExportError(f"cannot export this model exactly: {reason}")
    g = Graph()
    image, size = _input_image(g, detector)
    work_h, work_w = g.dim(image, 2), g.dim(image, 3)
    anomaly = g.op("Reshape", _smoothed_map(g, detector, image), g.op("Shape", image, start=2))  # (h, w)
    calibration = detector.calibration
    if calibration.edge_rows and (max(calibration.edge_rows) > 1.0 or max(calibration.edge_columns) > 1.0):
        rows = g.op("Unsqueeze", _edge_divisor(g, work_h, list(calibration.edge_rows)), g.i64(1))
        columns = g.op("Unsqueeze", _edge_divisor(g, work_w, list(calibration.edge_columns)), g.i64(0))
        anomaly = g.op("Div", anomaly, g.op("Max", rows, columns))
    if size is not None:
        anomaly = resize(g, anomaly, work_h, work_w, g.dim("image", 0), g.dim("image", 1), bilinear_matrix)
    named = {
        "anomaly_map": anomaly,
        "score": _image_score(g, detector, anomaly),
        "image_threshold": g.const(detector.threshold),
        "pixel_threshold": g.const(detector.pixel_threshold),
    }
    g.nodes += [helper.make_node("Identity", [value], [name]) for name, value in named.items()]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["height", "width", "channels"])]
    outputs = [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["height", "width"])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, []) for name in list(named)[1:]]
    graph = helper.make_graph(g.nodes, "lista_detector", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lista")
    model.ir_version = min(model.ir_version, 9)  # readable by ONNX Runtime releases back to 1.16
    model.doc_string = (
        "lista texture defect detector. Input: a decoded image, float32 (height, width, channels) in [0, 1],"
        " channels 1 (gray) or 3 (RGB). Outputs: the anomaly map at the input's size, the image score"
        " (its maximum or top-k mean) and the image and mask thresholds. An image is anomalous when"
        " score >= image_threshold and the map has pixels >= pixel_threshold."
    )
    helper.set_model_props(model, {k: str(v) for k, v in metadata(detector).items()})
    return model


def metadata(detector: Detector) -> dict[str, object]:
    """What a runner needs besides the graph: sizes it can score, thresholds, the config."""
    cfg = detector.config
    coarsest = max(s.factor for s in detector.scales)
    sigma = cfg.score.smooth_sigma
    radius = max(1, math.ceil(3 * sigma)) if sigma > 0 else 0
    size = cfg.data.image_size
    return {
        "format": f"{FORMAT} {FORMAT_VERSION}",
        "lista_version": __version__,
        "channels": detector.channels,
        "image_size": size if isinstance(size, int) else "",
        "working_scale": "" if detector.working_scale is None else repr(detector.working_scale),
        # The working size must hold one patch at the coarsest scale (ceil(side / f) >= p)
        # and exceed the smoothing's radius (its reflected border).
        "min_side": max((cfg.patch.size - 1) * coarsest + 1, radius + 1),
        "tile_size": cfg.data.tile_size,
        "min_region": cfg.score.min_region,
        "threshold": repr(detector.threshold),
        "pixel_threshold": repr(detector.pixel_threshold),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
    }


def export(detector: Detector, out: str | Path) -> Path:
    """Write the detector's ONNX graph to `out` atomically; returns the path."""
    model = build(detector)
    out = Path(out)
    atomic_write(out, lambda tmp: tmp.write_bytes(model.SerializeToString()))
    return out
