"""Images to the model's resolution and between image scales: the resize to the working
size, block-mean downsampling and bilinear upsampling of coarse maps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .postprocess import prepare


def to_tensor(array: np.ndarray, channels: int, image_size: int | None, factor: float | None = None) -> torch.Tensor:
    """(H, W, C) float array -> (channels, h, w) tensor at the model's resolution
    (postprocess.prepare: the numpy resize both runtimes use)."""
    return torch.from_numpy(prepare(array, channels, image_size, factor))


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
