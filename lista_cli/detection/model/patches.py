"""Patch extractor: images <-> rows of flattened patches, with overlap-averaging fold.

Every pixel is covered for any image size: the image is reflect-padded at the bottom
and right until (size - p) is a multiple of the stride, and fold crops the padding off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def padded_size(size: int, patch: int, stride: int) -> int:
    """Smallest size >= `size` that a grid of patches with this stride covers exactly."""
    if size < patch:
        raise ValueError(f"image side {size} px is smaller than the patch size {patch} px")
    return size + (stride - (size - patch) % stride) % stride  # no branch: sizes stay symbolic when traced


def _pad(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """Reflect-padded at the bottom and right (by less than the stride <= patch <= side)."""
    height, width = images.shape[-2:]
    pad_h = padded_size(height, patch, stride) - height
    pad_w = padded_size(width, patch, stride) - width
    return F.pad(images, (0, pad_w, 0, pad_h), mode="reflect")


def grid_shape(height: int, width: int, patch: int, stride: int) -> tuple[int, int]:
    """Number of patch rows and columns for an image of this size."""
    rows = (padded_size(height, patch, stride) - patch) // stride + 1
    cols = (padded_size(width, patch, stride) - patch) // stride + 1
    return rows, cols


def unfold(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(B, C, H, W) images -> (B, N, C*p*p) patches, channel-major within a patch."""
    if images.dim() != 4:
        raise ValueError(f"Expected a 4-D tensor (B, C, H, W), got {images.dim()}-D")
    return F.unfold(_pad(images, patch, stride), patch, stride=stride).transpose(1, 2)


def fold(patches: torch.Tensor, size: tuple[int, int], patch: int, stride: int) -> torch.Tensor:
    """(B, N, C*p*p) patches -> (B, C, H, W) image, averaging where patches overlap."""
    if patches.dim() != 3:
        raise ValueError(f"Expected a 3-D tensor (B, N, C*p*p), got {patches.dim()}-D")
    height, width = size
    full = (padded_size(height, patch, stride), padded_size(width, patch, stride))
    columns = patches.transpose(1, 2)  # (B, C*p*p, N)
    summed = F.fold(columns, full, patch, stride=stride)
    ones = torch.ones(1, patch * patch, columns.shape[-1], dtype=patches.dtype, device=patches.device)
    counts = F.fold(ones, full, patch, stride=stride)
    return (summed / counts)[..., :height, :width]
