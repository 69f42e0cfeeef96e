"""From the sparse part S to pixel anomaly maps and image scores."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..model import patches


@functools.cache
def gaussian_kernel(sigma: float) -> tuple[float, ...]:
    """Normalised 1-D Gaussian of radius ceil(3 sigma) (at least 1), as plain numbers
    (constants when the forward pass is traced)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    return tuple(float(v) for v in kernel / kernel.sum())


def gaussian_smooth(maps: torch.Tensor, sigma: float, border: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps with reflective (or replicated) borders."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    height, width = maps.shape[-2:]
    mode = border if border == "replicate" or radius < min(height, width) else "replicate"
    padded = F.pad(maps[:, None], (radius, radius, radius, radius), mode=mode)
    # Separable: a 1 x k then a k x 1 convolution (two operators when traced for export;
    # weighted sums of shifted views were faster on the CPU but trace to 4k operators).
    weights = torch.tensor(kernel, dtype=maps.dtype, device=maps.device)
    rows = F.conv2d(padded, weights.view(1, 1, 1, -1))
    return F.conv2d(rows, weights.view(1, 1, -1, 1))[:, 0]


# Oriented smoothing of the sparse-part maps (score.sparse_smoothing): a thin crack or fibre
# leaves a faint, broken trail in S that an isotropic blur dilutes with the texture around
# it. An elongated Gaussian laid along the trail averages it with itself; laid across, it
# dilutes it as much as along any other line. So the map is the Gaussian-smoothed map plus,
# at each pixel, the largest difference between the elongated smoothing in one direction
# and in the perpendicular one: along a trail, the trail's contrast; none where the map
# looks the same in every direction (flat texture, the centre of a round spot, which so
# keeps its peak; its flanks get a weaker ring). The elongated smoothing runs at half
# resolution (2 x 2 block means, then bilinear x2 back), a quarter of the pixels and an
# eighth of the kernel taps, which scored the same on the validation sets.
LINE_ORIENTATIONS = 8  # directions 0, 22.5, ..., 157.5 degrees: four perpendicular pairs
LINE_SIGMA_ALONG = 10.0  # px at model resolution
LINE_SIGMA_ACROSS = 1.0


def oriented_kernels(along: float, across: float, count: int = LINE_ORIENTATIONS) -> np.ndarray:
    """(count, 1, k, k) normalised elongated Gaussians (sigma `along` the direction, `across`
    it), directions count equal steps of 180 degrees (kernel i + count/2 is perpendicular to
    kernel i), radius ceil(3 along)."""
    radius = max(1, math.ceil(3 * along))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    y, x = np.meshgrid(offsets, offsets, indexing="ij")
    kernels = []
    for index in range(count):
        angle = math.pi * index / count
        u = x * math.cos(angle) + y * math.sin(angle)
        v = -x * math.sin(angle) + y * math.cos(angle)
        kernel = np.exp(-(u**2) / (2 * along**2) - v**2 / (2 * across**2))
        kernels.append(kernel / kernel.sum())
    return np.stack(kernels)[:, None].astype(np.float32)


@functools.cache
def line_kernels() -> np.ndarray:
    """The elongated Gaussians line_contrast applies at half resolution (built once, in numpy:
    a cached tensor would be a traced one when first built during an export)."""
    return oriented_kernels(LINE_SIGMA_ALONG / 2, LINE_SIGMA_ACROSS / 2)


def line_radius() -> int:
    """The half-resolution kernels' radius (px there)."""
    return line_kernels().shape[-1] // 2


def line_reach() -> int:
    """How far (px) the elongated smoothing reaches: its half-resolution kernel radius,
    doubled, plus the block and the bilinear step."""
    return 2 * line_radius() + 2


def line_contrast(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps -> the largest |elongated smoothing in a direction - in the
    perpendicular direction| over the LINE_ORIENTATIONS / 2 pairs, at half resolution.
    Blocks start at pixel 0 and the upsampling is by exactly 2, so a tile at an even offset
    sees the whole image's values."""
    height, width = maps.shape[-2:]
    half = F.avg_pool2d(maps[:, None], 2, ceil_mode=True)
    kernels, radius = torch.from_numpy(line_kernels()).to(maps.device, maps.dtype), line_radius()
    mode = "reflect" if radius < min(half.shape[-2:]) else "replicate"
    responses = F.conv2d(F.pad(half, (radius,) * 4, mode=mode), kernels)
    pairs = LINE_ORIENTATIONS // 2
    contrast = (responses[:, :pairs] - responses[:, pairs:]).abs().amax(dim=1, keepdim=True)
    fine = F.interpolate(contrast, scale_factor=2, mode="bilinear", align_corners=False)
    return fine[:, 0, :height, :width]


def oriented_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) maps -> Gaussian-smoothed (sigma) plus their line contrast."""
    return gaussian_smooth(maps, sigma) + line_contrast(maps)


BROAD_KINDS = ("code",)  # one value per patch: smoothed with score.code_smooth_sigma


def kind_sigma(kind: str, sigma: float, code_sigma: float) -> float:
    """The Gaussian sigma of a component map of this kind."""
    return code_sigma if kind in BROAD_KINDS else sigma


def smooth_mix(
    components: torch.Tensor,
    weights: list[float],
    kinds: list[str],
    sigma: float,
    sparse_smoothing: str,
    code_sigma: float | None = None,
) -> torch.Tensor:
    """(B, M, h, w) component maps -> (B, h, w) weighted sum, smoothed: the code
    maps by a Gaussian of `code_sigma` (default `sigma`), the others by one of
    `sigma`, and with sparse_smoothing "oriented" each sparse-part map's line contrast added
    (it is not linear, so per map, as the validation samples them)."""
    if sparse_smoothing not in ("gaussian", "oriented"):
        raise ValueError(f"unknown sparse smoothing {sparse_smoothing!r}")
    code_sigma = sigma if code_sigma is None else code_sigma
    groups: dict[float, torch.Tensor] = {}
    for i, (kind, weight) in enumerate(zip(kinds, weights, strict=True)):
        level = kind_sigma(kind, sigma, code_sigma)
        term = components[:, i] * weight
        groups[level] = groups[level] + term if level in groups else term
    smoothed = sum(gaussian_smooth(raw, level) for level, raw in groups.items())
    if sparse_smoothing == "oriented":
        for i, kind in enumerate(kinds):
            if kind == "sparse":
                smoothed = smoothed + weights[i] * line_contrast(components[:, i])
    return smoothed


def sparse_norms(sparse: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, N, C*p*p) sparse rows -> (B, N, p*p): ||s|| over channels at each pixel of a patch."""
    batch, count, width = sparse.shape
    # sqrt of a sum of squares: torch's norm over a strided middle dimension is ~10x slower.
    return sparse.view(batch, count, channels, width // channels).square().sum(dim=2).sqrt()


def sparse_to_map(
    sparse: torch.Tensor,
    size: tuple[int, int],
    channels: int,
    patch: int,
    stride: int,
    divisors: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, N, C*p*p) sparse rows -> (B, H, W): per-pixel ||s|| over channels, each patch's
    divided by its (B, N) divisor if given (sparse_levels.py), overlap-averaged."""
    norms = sparse_norms(sparse, channels)  # (B, N, p*p)
    if divisors is not None:
        norms = norms / divisors[..., None]
    return patches.fold(norms, size, patch, stride)[:, 0]


def patch_values_to_map(values: torch.Tensor, size: tuple[int, int], patch: int, stride: int) -> torch.Tensor:
    """(B, N) one value per patch -> (B, H, W): each pixel the mean over the patches covering it."""
    batch, count = values.shape
    spread = values[..., None].expand(batch, count, patch * patch).contiguous()
    return patches.fold(spread, size, patch, stride)[:, 0]
