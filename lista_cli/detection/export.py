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
Images larger than one tile at the working size are tiled by the runner (onnx_model.py)
as tiling.py tiles them, through two more modes of the graph (inputs "prepare" and
"tile", each an If branch: ONNX Runtime runs every node of a graph otherwise).
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
from .onnx_layers import scale_maps, sparse_grid_noise
from .scoring import LINE_ORIENTATIONS, gaussian_kernel, kind_sigma, line_kernels, line_radius

OPSET = 18
FORMAT = "lista-onnx"
FORMAT_VERSION = 2  # 2: the level damping (levels.py)
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


def _level_damped(g: Graph, anomaly: str, reference: float, cap: float) -> str:
    """(h, w) map divided by clamp(its lower median / reference, 1, cap) (levels.damp_level)."""
    flat = g.op("Reshape", anomaly, g.i64(-1))
    count = g.op("Div", g.op("Add", g.op("Size", flat), g.const(1, np.int64)), g.const(2, np.int64))
    lowest = g.op("TopK", flat, g.op("Unsqueeze", count, g.i64(0)), outputs=2, largest=0, sorted=1)[0]
    level = g.op("ReduceMax", lowest, keepdims=0)
    divisor = g.op("Clip", g.op("Div", level, g.const(reference)), g.const(1.0), g.const(cap))
    return g.op("Div", anomaly, divisor)


def _input_image(g: Graph, detector: Detector) -> str:
    """The graph input "image" (H, W, 1 or 3) -> (1, C, H, W) in the model's channels."""
    expanded = g.op("Expand", "image", g.i64(1, 1, 3))  # (H, W, 1) or (H, W, 3) -> (H, W, 3)
    if detector.channels == 3:
        image = expanded
    else:  # gray input as it is, colour by luma
        luma = g.op("MatMul", expanded, g.const(np.array(LUMA, dtype=np.float32)[:, None]))
        first = g.op("Slice", "image", g.i64(0), g.i64(1), g.i64(2))  # the gray channel when C = 1
        image = g.op("Where", g.op("Equal", g.dim("image", 2), g.const(1, np.int64)), first, luma)
    return g.op("Unsqueeze", g.op("Transpose", image, perm=[2, 0, 1]), g.i64(0))


def _resized(g: Graph, image: str, size: tuple[str, str]) -> str:
    """(1, C, H, W) -> (1, C, h, w) at the working size (Detector.prepare)."""
    resized = resize(g, image, g.dim(image, 2), g.dim(image, 3), *size, antialias_matrix)
    return g.op("Clip", resized, g.const(0.0), g.const(1.0))


def _downsample(g: Graph, image: str, factor: int) -> str:
    if factor == 1:
        return image
    return g.op("AveragePool", image, kernel_shape=[factor] * 2, strides=[factor] * 2, ceil_mode=1)


def _smoothed_map(g: Graph, detector: Detector, image: str) -> str:
    """(1, C, h, w) -> (1, 1, h, w): every scale's component maps, weighted, summed and
    smoothed (Detector.anomaly_maps); a positive entry of the input "noise" replaces that
    scale's measured noise scale (tiles of one image share the image's)."""
    components = []
    for number, scale in enumerate(detector.scales):
        noise = g.op("Gather", "noise", g.const(number, np.int64))
        if scale.factor == 1:
            components += scale_maps(g, detector, scale, image, noise)
            continue
        small = _downsample(g, image, scale.factor)
        coarse = g.op("Concat", *scale_maps(g, detector, scale, small, noise), axis=1)
        factors = g.const([1.0, 1.0, float(scale.factor), float(scale.factor)])
        fine = g.op("Resize", coarse, "", factors, mode="linear", coordinate_transformation_mode="half_pixel")
        fine = crop(g, fine, g.dim(image, 2), g.dim(image, 3))
        components += [g.op("Slice", fine, g.i64(i), g.i64(i + 1), g.i64(1)) for i in range(len(scale.kinds))]
    score = detector.config.score
    groups: dict[float, str] = {}  # Gaussian sigma -> weighted sum of the maps it smooths
    for component, weight, kind in zip(components, detector.map_weights, detector.kinds, strict=True):
        sigma = kind_sigma(kind, score.smooth_sigma, score.code_smooth_sigma)
        term = g.op("Mul", component, g.const(weight))
        groups[sigma] = g.op("Add", groups[sigma], term) if sigma in groups else term
    smoothed = None
    for sigma, raw in groups.items():
        term = _gaussian(g, raw, sigma)
        smoothed = term if smoothed is None else g.op("Add", smoothed, term)
    if detector.calibration.sparse_smoothing == "oriented":  # plus each S map's line contrast
        for component, weight, kind in zip(components, detector.map_weights, detector.kinds, strict=True):
            if kind == "sparse":
                term = g.op("Mul", _line_contrast(g, component, image), g.const(weight))
                smoothed = g.op("Add", smoothed, term)
    return smoothed


def _gaussian(g: Graph, raw: str, sigma: float) -> str:
    """Separable Gaussian with reflected borders (scoring.gaussian_smooth)."""
    if sigma <= 0:
        return raw
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    padded = g.op("Pad", raw, g.i64(0, 0, radius, radius, 0, 0, radius, radius), mode="reflect")
    return g.op("Conv", g.op("Conv", padded, g.const(kernel.view(1, 1, 1, -1))), g.const(kernel.view(1, 1, -1, 1)))


def _line_contrast(g: Graph, component: str, image: str) -> str:
    """(1, 1, h, w) -> (1, 1, h, w): scoring.line_contrast (2 x 2 block means, the largest
    |elongated Gaussian - the perpendicular one|, bilinear x2, cropped)."""
    radius, pairs = line_radius(), LINE_ORIENTATIONS // 2
    half = _downsample(g, component, 2)
    padded = g.op("Pad", half, g.i64(0, 0, radius, radius, 0, 0, radius, radius), mode="reflect")
    responses = g.op("Conv", padded, g.const(line_kernels()))
    along = g.op("Slice", responses, g.i64(0), g.i64(pairs), g.i64(1))
    across = g.op("Slice", responses, g.i64(pairs), g.i64(2 * pairs), g.i64(1))
    contrast = g.op("ReduceMax", g.op("Abs", g.op("Sub", along, across)), g.i64(1), keepdims=1)
    factors = g.const([1.0, 1.0, 2.0, 2.0])
    fine = g.op("Resize", contrast, "", factors, mode="linear", coordinate_transformation_mode="half_pixel")
    return crop(g, fine, g.dim(image, 2), g.dim(image, 3))


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


def _scored(g: Graph, detector: Detector, image: str, size: tuple[str, str] | None) -> list[str]:
    """The scoring branch: (1, C, H, W) -> [anomaly map at the input's size, image score, -, the
    noise input]. With the input "tile" true, the image is a tile of the working-size image:
    no resize, no edge damping, and the map is the tile's smoothed map (tiling.tiled_map)."""
    work = image
    if size is not None:
        work = g.branch("tile", lambda b: [image], lambda b: [_resized(b, image, size)], [4])[0]
    work_h, work_w = g.dim(work, 2), g.dim(work, 3)
    anomaly = g.op("Reshape", _smoothed_map(g, detector, work), g.op("Shape", work, start=2))  # (h, w)
    calibration = detector.calibration
    if calibration.edge_rows and (max(calibration.edge_rows) > 1.0 or max(calibration.edge_columns) > 1.0):
        rows = g.op("Unsqueeze", _edge_divisor(g, work_h, list(calibration.edge_rows)), g.i64(1))
        columns = g.op("Unsqueeze", _edge_divisor(g, work_w, list(calibration.edge_columns)), g.i64(0))
        anomaly = g.op("Where", "tile", anomaly, g.op("Div", anomaly, g.op("Max", rows, columns)))
    if calibration.level_reference is not None:
        reference, cap = calibration.level_reference, calibration.level_cap
        anomaly = g.branch("tile", lambda b: [anomaly], lambda b: [_level_damped(b, anomaly, reference, cap)], [2])[0]
    if size is not None:
        height, width = g.dim(image, 2), g.dim(image, 3)

        def back(b: Graph) -> list[str]:
            return [resize(b, anomaly, work_h, work_w, height, width, bilinear_matrix)]

        anomaly = g.branch("tile", lambda b: [anomaly], back, [2])[0]
    channels = detector.channels
    return [anomaly, _image_score(g, detector, anomaly), g.const(np.zeros((1, channels, 0, 0))), "noise"]


def build(detector: Detector):
    """The detector as an onnx.ModelProto (raises ExportError if it cannot be exact)."""
    require_onnx()
    from onnx import helper, numpy_helper

    reason = unsupported(detector)
    if reason is not None:
        raise ExportError(f"cannot export this model exactly: {reason}")
    g = Graph()
    image = _input_image(g, detector)
    height, width = g.dim("image", 0), g.dim("image", 1)
    size = _working_size(g, detector, height, width)
    ranks = [2, 0, 4, 1]  # anomaly_map, score, working_image, noise_scales

    def prepare(b: Graph) -> list[str]:  # the working-size image and its tile noise scales
        work = image if size is None else _resized(b, image, size)
        noises = [sparse_grid_noise(b, detector, s, _downsample(b, work, s.factor)) for s in detector.scales]
        noises = b.op("Concat", *[b.op("Reshape", n, b.i64(1)) for n in noises], axis=0)
        return [b.const(np.zeros((0, 0))), b.const(0.0), work, noises]

    def score(b: Graph) -> list[str]:
        return _scored(b, detector, image, size)

    outputs_of = g.branch("prepare", prepare, score, ranks)
    named = {
        "anomaly_map": outputs_of[0],
        "score": outputs_of[1],
        "image_threshold": g.const(detector.threshold),
        "pixel_threshold": g.const(detector.pixel_threshold),
        "working_image": outputs_of[2],
        "noise_scales": outputs_of[3],
    }
    g.nodes += [helper.make_node("Identity", [value], [name]) for name, value in named.items()]
    scales = len(detector.scales)
    g.initializers += [  # inputs with defaults: feed them only to score an image in tiles
        numpy_helper.from_array(np.full(scales, -1.0, dtype=np.float32), "noise"),
        numpy_helper.from_array(np.array(False), "tile"),
        numpy_helper.from_array(np.array(False), "prepare"),
    ]
    return _model(g, detector)


def _model(g: Graph, detector: Detector):
    """The ModelProto around the built graph: inputs (three with defaults), outputs, metadata."""
    from onnx import TensorProto, helper

    scales = len(detector.scales)
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, ["height", "width", "channels"]),
        helper.make_tensor_value_info("noise", TensorProto.FLOAT, [scales]),
        helper.make_tensor_value_info("tile", TensorProto.BOOL, []),
        helper.make_tensor_value_info("prepare", TensorProto.BOOL, []),
    ]
    outputs = [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [None, None])]
    outputs += [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in ("score", "image_threshold", "pixel_threshold")
    ]
    outputs += [
        helper.make_tensor_value_info("working_image", TensorProto.FLOAT, [None, None, None, None]),
        helper.make_tensor_value_info("noise_scales", TensorProto.FLOAT, [scales]),
    ]
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
    sigma = max(cfg.score.smooth_sigma, cfg.score.code_smooth_sigma)
    radius = max(1, math.ceil(3 * sigma)) if sigma > 0 else 0
    if detector.calibration.sparse_smoothing == "oriented":  # its half-resolution reflected border
        radius = max(radius, 2 * line_radius())
    size = cfg.data.image_size
    return {
        "format": f"{FORMAT} {FORMAT_VERSION}",
        "lista_version": __version__,
        "channels": detector.channels,
        "image_size": size if isinstance(size, int) else "",
        "working_scale": "" if detector.working_scale is None else repr(detector.working_scale),
        # The working size must hold one patch at the coarsest scale (ceil(side / f) >= p)
        # and exceed the smoothing's radius (its reflected border; at half resolution for
        # the oriented smoothing of S).
        "min_side": max((cfg.patch.size - 1) * coarsest + 1, radius + 1),
        "tile_size": cfg.data.tile_size,
        "factors": json.dumps([int(s.factor) for s in detector.scales]),
        "patch": json.dumps([cfg.patch.size, cfg.patch.stride]),
        "smooth_sigma": repr(cfg.score.smooth_sigma),
        "code_smooth_sigma": repr(cfg.score.code_smooth_sigma),
        "smoothing_reach": detector.smoothing_reach,
        "image_score": json.dumps([cfg.score.image_score, cfg.score.top_k]),
        "edges": json.dumps([list(detector.calibration.edge_rows), list(detector.calibration.edge_columns)]),
        "level": json.dumps([detector.calibration.level_reference, detector.calibration.level_cap]),
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
