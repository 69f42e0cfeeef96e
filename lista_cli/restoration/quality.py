"""Image quality against a sharp reference: PSNR and SSIM (Wang et al. 2004, Gaussian window)."""

from __future__ import annotations

import math

import numpy as np

from .blur import gaussian_line


def psnr(reference: np.ndarray, image: np.ndarray, data_range: float = 1.0) -> float:
    error = float(np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2))
    return math.inf if error == 0 else 10.0 * math.log10(data_range**2 / error)


def _gaussian_filter(image: np.ndarray, sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    """Separable Gaussian filter with reflective ('symmetric') borders, as scikit-image's SSIM."""
    radius = int(truncate * sigma + 0.5)
    kernel = gaussian_line(sigma, radius)
    padded = np.pad(image, radius, mode="symmetric")
    rows = sum(w * padded[:, i : i + image.shape[1]] for i, w in enumerate(kernel))
    return sum(w * rows[i : i + image.shape[0], :] for i, w in enumerate(kernel))


def ssim(reference: np.ndarray, image: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM over pixels (and channels), Gaussian window sigma 1.5, unbiased covariances."""
    x = np.asarray(reference, np.float64)
    y = np.asarray(image, np.float64)
    if x.ndim == 3:
        return float(np.mean([ssim(x[..., c], y[..., c], data_range) for c in range(x.shape[-1])]))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    count = 11 * 11  # sample-covariance correction over the 11x11 window, as scikit-image
    correction = count / (count - 1)
    mx, my = _gaussian_filter(x), _gaussian_filter(y)
    vx = correction * (_gaussian_filter(x * x) - mx * mx)
    vy = correction * (_gaussian_filter(y * y) - my * my)
    cxy = correction * (_gaussian_filter(x * y) - mx * my)
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    radius = int(3.5 * 1.5 + 0.5)
    return float(value[radius:-radius, radius:-radius].mean())
