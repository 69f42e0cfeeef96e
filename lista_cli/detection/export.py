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
import torch

from .. import __version__
from ..errors import ListaError
from ..io.imageio import atomic_write
from .detector import Detector, Scale
from .onnx_graph import Graph, antialias_matrix, bilinear_matrix, crop, resize
from .scoring import gaussian_kernel
from .typicality import RESIDUAL_FLOOR

OPSET = 18
FORMAT = "lista-onnx"
FORMAT_VERSION = 1
INT64_MAX = 2**63 - 1
LUMA = (0.299, 0.587, 0.114)  # imageio.to_channels: RGB to gray by ITU-R 601 luma
NOISE_SAMPLE = 32768  # model.noise_scale: the median of an evenly spaced sample of this many entries


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


def _fold_counts(g: Graph, grid: str, patch: int, stride: int) -> str:
    """(1, 1, H', W') number of patches covering each pixel of the padded image, for a
    (1, *, gh, gw) patch grid."""
    shape = g.op("Concat", g.i64(1, 1), g.op("Slice", g.op("Shape", grid), g.i64(2), g.i64(4)), axis=0)
    ones = g.op("Expand", g.const(1.0), shape)
    return g.op("ConvTranspose", ones, g.const(np.ones((1, 1, patch, patch))), strides=[stride, stride])


def _patch_values_map(g: Graph, values: str, grid: str, counts: str, image: str, patch: int, stride: int) -> str:
    """(N,) one value per patch -> (1, 1, h, w): each pixel the mean over the patches covering it."""
    shape = g.op("Concat", g.i64(1, 1), g.op("Slice", g.op("Shape", grid), g.i64(2), g.i64(4)), axis=0)
    ones = g.const(np.ones((1, 1, patch, patch)))
    summed = g.op("ConvTranspose", g.op("Reshape", values, shape), ones, strides=[stride, stride])
    return crop(g, g.op("Div", summed, counts), g.dim(image, 2), g.dim(image, 3))


def _noise_scale(g: Graph, residual: str) -> str:
    """Scalar robust noise scale: 1.4826 * the (lower) median of |residual| over an evenly
    spaced sample of at most NOISE_SAMPLE entries, at least 1e-4 (model.noise_scale)."""
    flat = g.op("Reshape", g.op("Abs", residual), g.i64(-1))
    count = g.op("Size", flat)
    step = g.op("Div", g.op("Add", count, g.const(NOISE_SAMPLE - 1, np.int64)), g.const(NOISE_SAMPLE, np.int64))
    sample = g.op("Slice", flat, g.i64(0), g.i64(INT64_MAX), g.i64(0), g.op("Unsqueeze", step, g.i64(0)))
    size = g.op("Size", sample)
    k = g.op("Add", g.op("Div", g.op("Sub", size, g.const(1, np.int64)), g.const(2, np.int64)), g.const(1, np.int64))
    smallest = g.op("TopK", sample, g.op("Unsqueeze", k, g.i64(0)), outputs=2, largest=0, sorted=1)[0]
    median = g.op("Gather", smallest, g.op("Sub", k, g.const(1, np.int64)))
    return g.op("Max", g.op("Mul", median, g.const(1.4826)), g.const(1e-4))


def _soft_threshold(g: Graph, values: str, threshold: str) -> str:
    return g.op("Sub", values, g.op("Clip", values, g.op("Neg", threshold), threshold))


def _sparse_part(g: Graph, model, centred: str, residual: str) -> str:
    """(1, N, d) centred rows -> S_K (UnfoldedISTA.forward with a global background)."""
    with torch.no_grad():
        thresholds = model.log_theta.exp()
        if model.kind == "full":
            encoder, state = model.w_enc, model.w_state
        elif model.kind == "cp":
            encoder, state = model.w_step, torch.eye(model.dim) - model.w_step
        else:
            encoder = state = None
    scale = _noise_scale(g, residual) if model.relative_threshold else g.const(1.0)
    basis, basis_t = g.const(model.basis), g.const(model.basis.T.contiguous())
    drive = None if encoder is None else g.op("MatMul", centred, g.const(encoder.T.contiguous()))
    state_t = None if state is None else g.const(state.T.contiguous())
    sparse = previous = None  # None stands for all zeros
    momentum = 1.0
    for k in range(model.layers):
        point = sparse
        if model.fista and sparse is not None:
            following = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
            step = g.op("Sub", sparse, previous) if previous is not None else sparse
            point = g.op("Add", sparse, g.op("Mul", step, g.const((momentum - 1) / following)))
            momentum = following
        elif model.fista:
            momentum = (1 + math.sqrt(1 + 4 * momentum**2)) / 2
        previous = sparse
        if model.kind == "alista":
            target = centred if point is None else g.op("Sub", centred, point)
            projected = g.op("Sub", target, g.op("MatMul", g.op("MatMul", target, basis), basis_t))
            step = g.op("Mul", projected, g.const(model.gamma[k]))
            layer_input = step if point is None else g.op("Add", point, step)
        elif point is None:
            layer_input = drive
        else:
            layer_input = g.op("Add", drive, g.op("MatMul", point, state_t))
        sparse = _soft_threshold(g, layer_input, g.op("Mul", g.const(thresholds[k]), scale))
    return sparse


def _patch_rows(g: Graph, image: str, channels: int, p: int, stride: int) -> tuple[str, str]:
    """(1, C, h, w) -> rows (1, N, C*p*p) as patches.unfold makes them (bottom and right
    reflect-padded until the patch grid covers the image), and the (1, d, gh, gw) grid."""

    def padding(side: str) -> str:  # patches.padded_size - side
        extra = g.op("Mod", g.op("Sub", side, g.const(p, np.int64)), g.const(stride, np.int64))
        return g.op("Mod", g.op("Sub", g.const(stride, np.int64), extra), g.const(stride, np.int64))

    bottom, right = (g.op("Unsqueeze", padding(g.dim(image, axis)), g.i64(0)) for axis in (2, 3))
    padded = g.op("Pad", image, g.op("Concat", g.i64(0, 0, 0, 0, 0, 0), bottom, right, axis=0), mode="reflect")
    # F.unfold as a convolution with one-hot kernels: output channel c*p*p + i*p + j reads
    # channel c at offset (i, j), so the rows come out channel-major as patches.unfold's.
    dim = channels * p * p
    picker = np.zeros((dim, channels, p, p), dtype=np.float32)
    for c in range(channels):
        for i in range(p):
            for j in range(p):
                picker[c * p * p + i * p + j, c, i, j] = 1.0
    grid = g.op("Conv", padded, g.const(picker), strides=[stride, stride])  # (1, d, gh, gw)
    rows = g.op("Transpose", g.op("Reshape", grid, g.i64(1, dim, -1)), perm=[0, 2, 1])  # (1, N, d)
    return rows, grid


def _sparse_map(g: Graph, sparse: str, grid: str, counts: str, image: str, channels: int, p: int, stride: int) -> str:
    """||s|| per pixel over channels, folded with overlap averaging (scoring.sparse_to_map)."""
    squares = g.op("Reshape", g.op("Mul", sparse, sparse), g.i64(1, -1, channels, p * p))
    norms = g.op("Sqrt", g.op("ReduceSum", squares, g.i64(2), keepdims=0))  # (1, N, p*p)
    norm_grid = g.op(
        "Reshape",
        g.op("Transpose", norms, perm=[0, 2, 1]),
        g.op("Concat", g.i64(1, p * p), g.op("Slice", g.op("Shape", grid), g.i64(2), g.i64(4)), axis=0),
    )
    fold = np.zeros((p * p, 1, p, p), dtype=np.float32)
    for i in range(p):
        for j in range(p):
            fold[i * p + j, 0, i, j] = 1.0
    summed = g.op("ConvTranspose", norm_grid, g.const(fold), strides=[stride, stride])
    return crop(g, g.op("Div", summed, counts), g.dim(image, 2), g.dim(image, 3))


def _nearest_code(g: Graph, bank, centred: str) -> tuple[str, str]:
    """(N,) index of each patch's nearest bank code and the distance in units of its radius
    (typicality._nearest: the expanded form shortlists two codes, exact distances decide)."""
    with torch.no_grad():
        weights = bank.radii.square().reciprocal()
        offsets = (bank.codes.square().sum(dim=1) * weights)[None]
        factors = torch.cat([-2 * bank.codes.T * weights, weights[None]])
    rank = bank.codes.shape[1]
    codes = g.op("Reshape", g.op("MatMul", centred, g.const(bank.basis)), g.i64(-1, rank))  # (N, R)
    lifted = g.op("Concat", codes, g.op("ReduceSum", g.op("Mul", codes, codes), g.i64(1), keepdims=1), axis=1)
    expanded = g.op("Add", g.op("MatMul", lifted, g.const(factors)), g.const(offsets))  # (N, M)
    shortlist = min(2, len(bank.codes))
    candidates = g.op("TopK", expanded, g.i64(shortlist), outputs=2, axis=1, largest=0, sorted=1)[1]  # (N, 2)
    gap = g.op("Sub", g.op("Unsqueeze", codes, g.i64(1)), g.op("Gather", g.const(bank.codes), candidates))
    exact = g.op(
        "Div",
        g.op("Sqrt", g.op("ReduceSum", g.op("Mul", gap, gap), g.i64(2), keepdims=0)),
        g.op("Gather", g.const(bank.radii), candidates),
    )  # (N, 2)
    pick = g.op("ArgMin", exact, axis=1, keepdims=1)
    nearest = g.op("Reshape", g.op("GatherElements", candidates, pick, axis=1), g.i64(-1))
    return nearest, g.op("Reshape", g.op("GatherElements", exact, pick, axis=1), g.i64(-1))


def _scale_maps(g: Graph, detector: Detector, scale: Scale, image: str) -> list[str]:
    """(1, C, h, w) image at this scale -> its component maps, each (1, 1, h, w)
    (Detector.scale_components)."""
    p, stride, channels = detector.config.patch.size, detector.config.patch.stride, detector.channels
    model, bank = scale.model, scale.bank
    rows, grid = _patch_rows(g, image, channels, p, stride)
    centred = g.op("Sub", rows, g.const(model.mean))
    projected = g.op("MatMul", g.op("MatMul", centred, g.const(model.basis)), g.const(model.basis.T.contiguous()))
    residual = g.op("Sub", centred, projected)  # Q x = x - U U^T x
    counts = _fold_counts(g, grid, p, stride)
    sparse = _sparse_part(g, model, centred, residual)
    maps = [_sparse_map(g, sparse, grid, counts, image, channels, p, stride)]
    if bank is None:
        return maps
    nearest, distance = _nearest_code(g, bank, centred)
    maps.append(_patch_values_map(g, distance, grid, counts, image, p, stride))
    if bank.has_residual:  # |log(||Q x||^2 / d + floor) - the nearest code's level|
        variance = g.op("ReduceMean", g.op("Mul", residual, residual), g.i64(2), keepdims=0)
        level = g.op("Reshape", g.op("Log", g.op("Add", variance, g.const(RESIDUAL_FLOOR))), g.i64(-1))
        deviation = g.op("Abs", g.op("Sub", level, g.op("Gather", g.const(bank.residual_levels), nearest)))
        maps.append(_patch_values_map(g, deviation, grid, counts, image, p, stride))
    return maps


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
            components += _scale_maps(g, detector, scale, image)
            continue
        small = g.op("AveragePool", image, kernel_shape=[scale.factor] * 2, strides=[scale.factor] * 2, ceil_mode=1)
        coarse = g.op("Concat", *_scale_maps(g, detector, scale, small), axis=1)
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
