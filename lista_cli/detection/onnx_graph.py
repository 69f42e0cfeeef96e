"""A small ONNX graph builder, and the resizes PyTorch does written as ONNX operators.

ONNX's antialiased Resize weighs pixels differently from PyTorch's (up to 0.05 on an image
in [0, 1]) and its sized Resize maps coordinates with out/in where PyTorch uses in/out
(5e-5 apart), so resizes here are products with interpolation matrices built in the graph
from the sizes at run time, with PyTorch's formulas (aten/src/ATen/native/UpSample.h).
"""

from __future__ import annotations

import numpy as np
import torch


class Graph:
    """A small ONNX graph builder: op() adds a node and returns its output name(s)."""

    def __init__(self, counter: list[int] | None = None) -> None:
        from onnx import numpy_helper

        self._numpy_helper = numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self._counter = [0] if counter is None else counter  # shared with sub-graphs: names stay unique

    def _name(self, hint: str) -> str:
        self._counter[0] += 1
        return f"{hint}_{self._counter[0]}"

    def branch(self, condition: str, then_build, else_build, ranks: list[int]) -> list[str]:
        """An If node: `then_build(sub)` / `else_build(sub)` add a branch's nodes to a fresh
        sub-graph (which may read this graph's values) and return its float outputs, whose
        ranks are `ranks`. Only the branch taken runs (ONNX Runtime runs every other node)."""
        from onnx import TensorProto, helper

        branches = []
        for build in (then_build, else_build):
            sub = Graph(self._counter)
            values = [sub.op("Identity", value) for value in build(sub)]  # outputs made inside the branch
            outputs = [
                helper.make_tensor_value_info(v, TensorProto.FLOAT, [None] * r)
                for v, r in zip(values, ranks, strict=True)
            ]
            branches.append(helper.make_graph(sub.nodes, self._name("branch"), [], outputs, sub.initializers))
        names = self.op("If", condition, outputs=len(ranks), then_branch=branches[0], else_branch=branches[1])
        return [names] if isinstance(names, str) else names

    def const(self, value, dtype=np.float32) -> str:
        """An initializer holding `value` (a tensor, array or number; rank kept)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        array = np.asarray(value, dtype=dtype)
        name = self._name("const")
        self.initializers.append(self._numpy_helper.from_array(array, name))
        return name

    def i64(self, *values: int) -> str:
        """A 1-D int64 constant."""
        return self.const(list(values), np.int64)

    def op(self, kind: str, *inputs: str, outputs: int = 1, **attributes):
        from onnx import helper

        names = [self._name(kind.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(kind, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else names

    def dim(self, tensor: str, axis: int) -> str:
        """Size of `tensor` along `axis`, an int64 scalar."""
        return self.op("Gather", self.op("Shape", tensor), self.const(axis, np.int64))

    def scalar(self, value: str, dtype: int) -> str:
        return self.op("Cast", value, to=dtype)


def as_float(g: Graph, value: str) -> str:
    from onnx import TensorProto

    return g.scalar(value, TensorProto.FLOAT)


def float_range(g: Graph, length: str) -> str:
    """0, 1, ..., length - 1 as float32."""
    return as_float(g, g.op("Range", g.const(0, np.int64), length, g.const(1, np.int64)))


def antialias_matrix(g: Graph, size_in: str, size_out: str) -> str:
    """(out, in) matrix of PyTorch's antialiased bilinear resize along one axis
    (F.interpolate(..., antialias=True)): a triangle filter of half-width max(scale, 1)
    around each output pixel's centre, normalised per output pixel."""
    scale = g.op("Div", as_float(g, size_in), as_float(g, size_out))
    support = g.op("Max", scale, g.const(1.0))
    centre = g.op("Mul", scale, g.op("Add", float_range(g, size_out), g.const(0.5)))  # (out,)
    offset = g.op(
        "Sub",
        g.op("Unsqueeze", g.op("Add", float_range(g, size_in), g.const(0.5)), g.i64(0)),
        g.op("Unsqueeze", centre, g.i64(1)),
    )  # (out, in): j + 0.5 - centre
    weights = g.op("Relu", g.op("Sub", g.const(1.0), g.op("Abs", g.op("Div", offset, support))))
    return g.op("Div", weights, g.op("ReduceSum", weights, g.i64(1), keepdims=1))


def bilinear_matrix(g: Graph, size_in: str, size_out: str) -> str:
    """(out, in) matrix of PyTorch's bilinear resize to a given size, align_corners=False:
    source = max((i + 0.5) * in / out - 0.5, 0), between pixels floor(source) and the next."""
    from onnx import TensorProto

    scale = g.op("Div", as_float(g, size_in), as_float(g, size_out))
    source = g.op(
        "Relu", g.op("Sub", g.op("Mul", g.op("Add", float_range(g, size_out), g.const(0.5)), scale), g.const(0.5))
    )
    last = g.op("Sub", size_in, g.const(1, np.int64))
    low = g.op("Min", g.scalar(g.op("Floor", source), TensorProto.INT64), last)
    high = g.op("Min", g.op("Add", low, g.const(1, np.int64)), last)
    weight_high = g.op("Sub", source, as_float(g, low))
    weight_low = g.op("Sub", g.const(1.0), weight_high)
    columns = g.op("Unsqueeze", g.op("Range", g.const(0, np.int64), size_in, g.const(1, np.int64)), g.i64(0))
    at_low = as_float(g, g.op("Equal", columns, g.op("Unsqueeze", low, g.i64(1))))
    at_high = as_float(g, g.op("Equal", columns, g.op("Unsqueeze", high, g.i64(1))))
    return g.op(
        "Add",
        g.op("Mul", at_low, g.op("Unsqueeze", weight_low, g.i64(1))),
        g.op("Mul", at_high, g.op("Unsqueeze", weight_high, g.i64(1))),
    )


def resize(g: Graph, images: str, height: str, width: str, new_height: str, new_width: str, matrix) -> str:
    """(..., h, w) -> (..., new_h, new_w): rows then columns through `matrix` (one axis)."""
    rows = matrix(g, height, new_height)  # (new_h, h)
    columns = g.op("Transpose", matrix(g, width, new_width), perm=[1, 0])  # (w, new_w)
    return g.op("MatMul", g.op("MatMul", rows, images), columns)


def crop(g: Graph, maps: str, height: str, width: str) -> str:
    """(..., H, W) -> (..., height, width): the top-left part."""
    ends = g.op("Concat", g.op("Unsqueeze", height, g.i64(0)), g.op("Unsqueeze", width, g.i64(0)), axis=0)
    return g.op("Slice", maps, g.i64(0, 0), ends, g.i64(2, 3))
