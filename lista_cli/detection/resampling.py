"""Images to the model's resolution and between image scales: the resize to the working
size, block-mean downsampling and bilinear upsampling of coarse maps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..io.imageio import to_channels, working_shape


def to_tensor(array: np.ndarray, channels: int, image_size: int | None, factor: float | None = None) -> torch.Tensor:
    """(H, W, C) float array -> (channels, h, w) tensor at the model's resolution."""
    planar = np.ascontiguousarray(np.moveaxis(to_channels(array, channels), -1, 0))  # (C, H, W)
    tensor = torch.from_numpy(planar)
    height, width = tensor.shape[-2:]
    target = working_shape(height, width, image_size, factor)
    if target != (height, width):  # antialiased resampling can overshoot [0, 1] slightly
        tensor = F.interpolate(tensor[None], size=target, mode="bilinear", antialias=True, align_corners=False)[0]
        tensor = tensor.clamp_(0, 1)
    return tensor


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, ceil(h/f), ceil(w/f)): means of f x f blocks (partial blocks at
    the bottom and right edges average the pixels they have). Block j always covers pixels
    [j f, (j+1) f), so tiles whose offsets are multiples of f see the same blocks."""
    if factor == 1:
        return images
    return F.avg_pool2d(images, factor, ceil_mode=True)


def upsample(maps: torch.Tensor, factor: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, M, h', w') coarse maps -> (B, M, h, w): bilinear by exactly `factor`, then cropped."""
    if factor == 1:
        return maps
    fine = F.interpolate(maps, scale_factor=factor, mode="bilinear", align_corners=False)
    return fine[..., : size[0], : size[1]]
