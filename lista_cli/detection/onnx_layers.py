"""One image scale of the detector as ONNX operators (export.py assembles the scales):
patch rows by a one-hot convolution, the unfolded ISTA layers with the per-image noise
scale, the sparse part folded to pixels by a transposed convolution, and the nearest-code
search with the residual levels. Each follows the PyTorch code it names step by step."""

from __future__ import annotations

import math

import numpy as np
import torch

from .detector import Detector, Scale
from .onnx_graph import Graph, crop
from .typicality import BLEND_EPSILON, RESIDUAL_FLOOR

INT64_MAX = 2**63 - 1
NOISE_SAMPLE = 32768  # model.noise_scale: the median of an evenly spaced sample of this many entries


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


def _sparse_part(g: Graph, model, centred: str, residual: str, noise: str | None = None) -> str:
    """(1, N, d) centred rows -> S_K (UnfoldedISTA.forward with a global background);
    `noise` (a scalar) replaces the measured noise scale where it is positive."""
    with torch.no_grad():
        thresholds = model.log_theta.exp()
        if model.kind == "full":
            encoder, state = model.w_enc, model.w_state
        elif model.kind == "cp":
            encoder, state = model.w_step, torch.eye(model.dim) - model.w_step
        else:
            encoder = state = None
    scale = _noise_scale(g, residual) if model.relative_threshold else g.const(1.0)
    if noise is not None and model.relative_threshold:
        scale = g.op("Where", g.op("Greater", noise, g.const(0.0)), noise, scale)
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


def _sparse_map(
    g: Graph,
    sparse: str,
    grid: str,
    counts: str,
    image: str,
    channels: int,
    p: int,
    stride: int,
    divisors: str | None = None,
) -> str:
    """||s|| per pixel over channels, each patch's divided by its (N,) divisor if given,
    folded with overlap averaging (scoring.sparse_to_map)."""
    squares = g.op("Reshape", g.op("Mul", sparse, sparse), g.i64(1, -1, channels, p * p))
    norms = g.op("Sqrt", g.op("ReduceSum", squares, g.i64(2), keepdims=0))  # (1, N, p*p)
    if divisors is not None:
        norms = g.op("Div", norms, g.op("Reshape", divisors, g.i64(1, -1, 1)))
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


def _nearest_codes(g: Graph, bank, centred: str) -> tuple[str, str]:
    """(N, k) indices of each patch's k = min(3, M) nearest bank codes, nearest first, and
    (N, k) their distances in units of their radii (typicality._shortlist: the expanded
    form shortlists, exact distances order)."""
    with torch.no_grad():
        weights = bank.radii.square().reciprocal()
        offsets = (bank.codes.square().sum(dim=1) * weights)[None]
        factors = torch.cat([-2 * bank.codes.T * weights, weights[None]])
    rank = bank.codes.shape[1]
    codes = g.op("Reshape", g.op("MatMul", centred, g.const(bank.basis)), g.i64(-1, rank))  # (N, R)
    lifted = g.op("Concat", codes, g.op("ReduceSum", g.op("Mul", codes, codes), g.i64(1), keepdims=1), axis=1)
    expanded = g.op("Add", g.op("MatMul", lifted, g.const(factors)), g.const(offsets))  # (N, M)
    size = min(3, len(bank.codes))
    candidates = g.op("TopK", expanded, g.i64(size), outputs=2, axis=1, largest=0, sorted=1)[1]  # (N, k)
    gap = g.op("Sub", g.op("Unsqueeze", codes, g.i64(1)), g.op("Gather", g.const(bank.codes), candidates))
    exact = g.op(
        "Div",
        g.op("Sqrt", g.op("ReduceSum", g.op("Mul", gap, gap), g.i64(2), keepdims=0)),
        g.op("Gather", g.const(bank.radii), candidates),
    )  # (N, k)
    exact, order = g.op("TopK", exact, g.i64(size), outputs=2, axis=1, largest=0, sorted=1)
    return g.op("GatherElements", candidates, order, axis=1), exact


def _blended(g: Graph, values: torch.Tensor, candidates: str, exact: str) -> str:
    """(N,) the (M,) per-code `values` of the two nearest codes blended
    (typicality.blend_weights): a residual level or a sparse divisor."""
    levels = g.op("Gather", g.const(values), candidates)  # (N, k)
    if len(values) == 1:
        return g.op("Reshape", levels, g.i64(-1))
    first_two = g.i64(0), g.i64(2), g.i64(1)
    nearest = g.op("Slice", exact, *first_two)  # (N, 2)
    last = g.op("Slice", exact, g.i64(-1), g.i64(2**62), g.i64(1))  # (N, 1)
    squared = g.op("Add", g.op("Mul", nearest, nearest), g.const(BLEND_EPSILON))
    weights = g.op("Div", g.op("Sub", last, nearest), squared)  # (d_k - d_i) / d_i^2
    total = g.op("ReduceSum", weights, g.i64(1), keepdims=1)
    normalised = g.op("Div", weights, g.op("Max", total, g.const(1e-30)))
    weights = g.op("Where", g.op("Greater", total, g.const(0.0)), normalised, g.const(0.5))
    blended = g.op("Mul", g.op("Slice", levels, *first_two), weights)
    return g.op("ReduceSum", blended, g.i64(1), keepdims=0)


def sparse_grid_noise(g: Graph, detector: Detector, scale: Scale, image: str) -> str:
    """The noise scale tiling.tiled_map measures for a whole (1, C, h, w) image at this
    scale: the patches on a grid of step stride * ceil(sqrt(patches / 65536)) (at least the
    stride), taken by strided slices, through the model's noise_scale."""
    from onnx import TensorProto

    p, stride, channels = detector.config.patch.size, detector.config.patch.stride, detector.channels
    if not scale.model.relative_threshold:
        return g.const(1.0)
    height, width = g.dim(image, 2), g.dim(image, 3)
    area = g.scalar(g.op("Mul", height, width), TensorProto.DOUBLE)
    per_patch = g.op("Div", g.op("Div", area, g.const(float(stride**2), np.float64)), g.const(65536.0, np.float64))
    spread = g.op("Ceil", g.op("Sqrt", per_patch))  # as tiling.py computes it, in double precision
    step = g.op(
        "Mul", g.op("Max", g.scalar(spread, TensorProto.INT64), g.const(1, np.int64)), g.const(stride, np.int64)
    )

    def padding(side: str) -> str:  # patches.padded_size(side, p, step) - side
        extra = g.op("Mod", g.op("Sub", side, g.const(p, np.int64)), step)
        return g.op("Mod", g.op("Sub", step, extra), step)

    bottom, right = (g.op("Unsqueeze", padding(side), g.i64(0)) for side in (height, width))
    padded = g.op("Pad", image, g.op("Concat", g.i64(0, 0, 0, 0, 0, 0), bottom, right, axis=0), mode="reflect")
    # grid positions 0, step, ..., the last patch ending at the padded edge
    counts = [
        g.op("Add", g.op("Div", g.op("Sub", g.dim(padded, axis), g.const(p, np.int64)), step), g.const(1, np.int64))
        for axis in (2, 3)
    ]
    steps = g.op("Concat", g.op("Unsqueeze", step, g.i64(0)), g.op("Unsqueeze", step, g.i64(0)), axis=0)
    span = [g.op("Add", g.op("Mul", g.op("Sub", n, g.const(1, np.int64)), step), g.const(1, np.int64)) for n in counts]
    pieces = []
    for i in range(p):
        for j in range(p):
            starts = g.i64(i, j)
            ends = g.op(
                "Concat",
                *[
                    g.op("Unsqueeze", g.op("Add", s, g.const(o, np.int64)), g.i64(0))
                    for s, o in zip(span, (i, j), strict=True)
                ],
                axis=0,
            )
            pieces.append(g.op("Unsqueeze", g.op("Slice", padded, starts, ends, g.i64(2, 3), steps), g.i64(2)))
    stacked = g.op("Concat", *pieces, axis=2)  # (1, C, p*p, gh, gw): channel-major, then (i, j)
    rows = g.op("Transpose", g.op("Reshape", stacked, g.i64(1, channels * p * p, -1)), perm=[0, 2, 1])
    model = scale.model
    centred = g.op("Sub", rows, g.const(model.mean))
    projected = g.op("MatMul", g.op("MatMul", centred, g.const(model.basis)), g.const(model.basis.T.contiguous()))
    return _noise_scale(g, g.op("Sub", centred, projected))


def scale_maps(g: Graph, detector: Detector, scale: Scale, image: str, noise: str | None = None) -> list[str]:
    """(1, C, h, w) image at this scale -> its component maps, each (1, 1, h, w)
    (Detector.scale_components); `noise` replaces the measured noise scale when positive."""
    p, stride, channels = detector.config.patch.size, detector.config.patch.stride, detector.channels
    model, bank = scale.model, scale.bank
    rows, grid = _patch_rows(g, image, channels, p, stride)
    centred = g.op("Sub", rows, g.const(model.mean))
    projected = g.op("MatMul", g.op("MatMul", centred, g.const(model.basis)), g.const(model.basis.T.contiguous()))
    residual = g.op("Sub", centred, projected)  # Q x = x - U U^T x
    counts = _fold_counts(g, grid, p, stride)
    sparse = _sparse_part(g, model, centred, residual, noise)
    if bank is None:
        return [_sparse_map(g, sparse, grid, counts, image, channels, p, stride)]
    candidates, exact = _nearest_codes(g, bank, centred)
    divisors = _blended(g, bank.sparse_divisors, candidates, exact) if len(bank.sparse_divisors) else None
    maps = [_sparse_map(g, sparse, grid, counts, image, channels, p, stride, divisors)]
    distance = g.op("Reshape", g.op("Slice", exact, g.i64(0), g.i64(1), g.i64(1)), g.i64(-1))
    maps.append(_patch_values_map(g, distance, grid, counts, image, p, stride))
    if bank.has_residual:  # |log(||Q x||^2 / d + floor) - the level the nearest codes expect|
        variance = g.op("ReduceMean", g.op("Mul", residual, residual), g.i64(2), keepdims=0)
        level = g.op("Reshape", g.op("Log", g.op("Add", variance, g.const(RESIDUAL_FLOOR))), g.i64(-1))
        deviation = g.op("Abs", g.op("Sub", level, _blended(g, bank.residual_levels, candidates, exact)))
        maps.append(_patch_values_map(g, deviation, grid, counts, image, p, stride))
    return maps
