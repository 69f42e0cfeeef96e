"""The detector's forward pass as one module: what `lista detect` runs in PyTorch and what
`lista export` traces into the ONNX graph (torch.onnx.export), so the two cannot drift.

    (1, C, H, W) working-size image, (1, C, h, w) tile of it -> (h, w) smoothed anomaly map

Each scale's noise scale is measured on the whole image (`noise_scale`, from the same sample
of |Q x| the model's own noise_scale takes), then the tile is scored; the untiled case
passes the image as its own tile. Before it (channels, the resize to the working size) and
after it (edge and level damping, the resize back, the image score, the tiles) are numpy
(postprocess.py, tiling.py), shared by both runtimes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..model import patches
from ..model.model import NOISE_FLOOR, NOISE_PER_MAD, NOISE_SAMPLE, UnfoldedISTA, lower_median
from .resampling import downsample

if TYPE_CHECKING:
    from .detector import Detector


def noise_scale(model: UnfoldedISTA, image: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(1, C, h, w) image -> (1, 1, 1) its robust noise scale as model.noise_scale measures
    it on all of the image's patch rows (the same evenly spaced sample of |Q x| entries),
    computed from the sampled rows alone; ones without relative thresholds.

    Sample k is entry k * step of the flattened (N, d) rows. When step <= d every row holds
    a sample, otherwise each sample has a row of its own; with spread = max(step, d) both
    read alike: the j-th distinct row is (j * spread) // d, and sample k lies in the
    (k * step) // spread-th of them. Each distinct row is gathered and projected once, so
    the work is min(N, 2^15) rows whatever the image size, in PyTorch and in the graph."""
    if not model.relative_threshold:
        return image.new_ones(1, 1, 1)
    padded = patches._pad(image, patch, stride)
    _, channels, height, width = padded.shape
    dim = model.dim
    columns = (width - patch) // stride + 1
    total_rows = ((height - patch) // stride + 1) * columns
    count = total_rows * dim  # entries of the (N, d) rows
    step = (count + NOISE_SAMPLE - 1) // NOISE_SAMPLE
    samples = (count + step - 1) // step
    spread = torch.sym_max(step, dim)
    row = torch.arange(torch.sym_min(total_rows, samples), device=image.device) * spread // dim
    grid_row = row // columns  # (a remainder by a traced size has no ONNX translation: subtract)
    start = grid_row * (stride * width) + (row - grid_row * columns) * stride  # each row's patch corner
    offset = torch.arange(dim, device=image.device)  # channel-major, then (i, j), as patches.unfold
    offset = (offset // patch**2) * (height * width) + (offset % patch**2 // patch) * width + offset % patch
    flat = (start[:, None] + offset[None, :]).reshape(-1)  # index_select: a Gather in ONNX (GatherND is 50x slower)
    rows = padded.reshape(-1).index_select(0, flat).view(-1, dim)  # (distinct rows, d)
    residual = model.project_out(rows - model.mean).reshape(-1)
    index = torch.arange(samples, device=image.device) * step  # the sampled entries
    position = index // spread * dim + (index - index // dim * dim)  # row among the distinct ones, entry
    sampled = residual.index_select(0, position).abs()
    return (NOISE_PER_MAD * lower_median(sampled)).clamp(min=NOISE_FLOOR).view(1, 1, 1)


class DetectorForward(nn.Module):
    """image, tile -> the tile's smoothed anomaly map (module docstring)."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor, tile: torch.Tensor) -> torch.Tensor:
        detector = self.detector
        p, stride = detector.config.patch.size, detector.config.patch.stride
        noise = []
        for scale in detector.scales:
            small = downsample(image, scale.factor)
            if min(small.shape[-2:]) < p:  # a coarse scale of a small image: scored as nothing
                noise.append(image.new_ones(1, 1, 1))
            else:
                noise.append(noise_scale(scale.model, small, p, stride))
        return detector.combine(detector.component_maps(tile, noise))[0]
