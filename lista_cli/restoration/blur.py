"""The blur measurement operator y = A x: a convolution by a known PSF with a boundary rule.

Kept apart from any solver (as deepinv's LinearPhysics): `A`, `A_adjoint` and a seeded
`adjointness_test`. Boundaries: 'periodic' (circular convolution) or 'reflect'
(half-sample symmetric extension, x[-1] = x[0], as a real camera sees beyond the frame).
Images are float64 arrays (H, W) or (H, W, C), blurred channel by channel.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import ListaError

BOUNDARIES = ("periodic", "reflect")


class PSFError(ListaError):
    """A PSF specification that cannot be used (exit code 1)."""


def _normalised(kernel: np.ndarray, spec: str) -> np.ndarray:
    kernel = np.asarray(kernel, dtype=np.float64)
    total = kernel.sum()
    if not np.isfinite(kernel).all() or total <= 0:
        raise PSFError(f"--psf {spec}: the kernel must be finite with a positive sum")
    # Odd sides, so the kernel has a centre pixel.
    pad_h, pad_w = 1 - kernel.shape[0] % 2, 1 - kernel.shape[1] % 2
    kernel = np.pad(kernel, ((0, pad_h), (0, pad_w)))
    return kernel / total


def gaussian_line(sigma: float, radius: int) -> np.ndarray:
    """A normalised 1-D Gaussian of `sigma` on the offsets -radius..radius."""
    offsets = np.arange(-radius, radius + 1)
    line = np.exp(-(offsets**2) / (2 * sigma**2))
    return line / line.sum()


def gaussian_psf(sigma: float) -> np.ndarray:
    line = gaussian_line(sigma, max(1, math.ceil(3 * sigma)))
    return np.outer(line, line)


def motion_psf(length: float, angle_degrees: float) -> np.ndarray:
    """A line of `length` px at `angle_degrees` (counter-clockwise from the x axis), anti-aliased."""
    radius = max(1, math.ceil(length / 2))
    ys, xs = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
    angle = math.radians(angle_degrees)
    along = xs * math.cos(angle) - ys * math.sin(angle)
    across = xs * math.sin(angle) + ys * math.cos(angle)
    weight = np.clip(1.0 - np.abs(across), 0, 1) * np.clip(length / 2 + 0.5 - np.abs(along), 0, 1)
    return weight / weight.sum()


def parse_psf(spec: str) -> np.ndarray:
    """'gaussian:SIGMA', 'box:N', 'motion:LENGTH,ANGLE', 'kernel:v1,v2,...' or a PSF image path."""
    kind, _, args = spec.partition(":")
    kind = kind.strip().lower()
    try:
        if kind == "gaussian":
            sigma = float(args)
            if not sigma > 0:
                raise ValueError
            return gaussian_psf(sigma)
        if kind == "box":
            size = int(args)
            if size < 1:
                raise ValueError
            return _normalised(np.ones((size, size)), spec)
        if kind == "motion":
            length, angle = (float(v) for v in args.split(","))
            if not length >= 1:
                raise ValueError
            return motion_psf(length, angle)
        if kind == "kernel":
            values = np.array([float(v) for v in args.split(",")])
            if values.size < 1:
                raise ValueError
            return _normalised(np.outer(values, values), spec)
    except ValueError:
        raise PSFError(
            f"--psf {spec}: bad parameters; expected gaussian:SIGMA>0, box:N>=1, motion:LENGTH>=1,ANGLE,"
            " kernel:v1,v2,... or a PSF image file"
        ) from None
    path = Path(spec)
    if path.is_file():
        from ..io.imageio import ImageError, read_image

        try:
            image = read_image(path)
        except ImageError as exc:
            raise PSFError(f"--psf: {exc}") from None
        return _normalised(image.mean(axis=-1), spec)
    raise PSFError(f"--psf {spec}: unknown PSF (gaussian:, box:, motion:, kernel: or an existing image file)")


def psf_is_symmetric(psf: np.ndarray) -> bool:
    """True when the PSF equals its flips along both axes (then the DCT diagonalises A)."""
    return bool(np.allclose(psf, psf[::-1, :]) and np.allclose(psf, psf[:, ::-1]))


def _centred_otf(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """FFT of the PSF placed in an array of `shape` with its centre at (0, 0)."""
    kh, kw = psf.shape
    if kh > shape[0] or kw > shape[1]:
        raise PSFError(f"the PSF ({kw}x{kh}) is larger than the image ({shape[1]}x{shape[0]})")
    padded = np.zeros(shape)
    padded[:kh, :kw] = psf
    padded = np.roll(padded, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    return np.fft.fft2(padded)


def symmetric_index(size: int, radius: int) -> np.ndarray:
    """Source index of each position of a half-sample symmetric extension by `radius`."""
    index = np.arange(-radius, size + radius)
    period = 2 * size
    index = np.mod(index, period)
    return np.where(index < size, index, period - 1 - index)


class Blur:
    """A x = psf * x under a boundary rule; A_adjoint its exact transpose."""

    def __init__(self, psf: np.ndarray, boundary: str = "reflect") -> None:
        if boundary not in BOUNDARIES:
            raise PSFError(f"boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
        self.psf = np.asarray(psf, dtype=np.float64)
        self.boundary = boundary
        self.radius = (self.psf.shape[0] // 2, self.psf.shape[1] // 2)

    def _apply(self, image: np.ndarray, adjoint: bool) -> np.ndarray:
        if image.ndim == 3:
            return np.stack([self._apply(image[..., c], adjoint) for c in range(image.shape[-1])], axis=-1)
        height, width = image.shape
        rh, rw = self.radius
        if self.boundary == "periodic":
            otf = _centred_otf(self.psf, (height, width))
            return np.real(np.fft.ifft2(np.fft.fft2(image) * (np.conj(otf) if adjoint else otf)))
        rows, cols = symmetric_index(height, rh), symmetric_index(width, rw)
        shape = (height + 2 * rh, width + 2 * rw)
        otf = _centred_otf(self.psf, shape)
        if not adjoint:
            extended = image[np.ix_(rows, cols)]  # P x
            blurred = np.real(np.fft.ifft2(np.fft.fft2(extended) * otf))
            return blurred[rh : rh + height, rw : rw + width]
        embedded = np.zeros(shape)
        embedded[rh : rh + height, rw : rw + width] = image
        correlated = np.real(np.fft.ifft2(np.fft.fft2(embedded) * np.conj(otf)))
        folded = np.zeros((height, width))  # P^T: add each extended value back to its source
        np.add.at(folded, np.ix_(rows, cols), correlated)
        return folded

    def A(self, image: np.ndarray) -> np.ndarray:  # noqa: N802 - the operator's usual name
        return self._apply(np.asarray(image, dtype=np.float64), adjoint=False)

    def A_adjoint(self, image: np.ndarray) -> np.ndarray:  # noqa: N802
        return self._apply(np.asarray(image, dtype=np.float64), adjoint=True)

    def adjointness_test(self, shape: tuple[int, ...], seed: int = 0) -> float:
        """Relative gap |<A x, y> - <x, A^T y>| / (|<A x, y>| + eps) on random x, y."""
        rng = np.random.default_rng(seed)
        x, y = rng.standard_normal(shape), rng.standard_normal(shape)
        left, right = np.vdot(self.A(x), y), np.vdot(x, self.A_adjoint(y))
        return float(abs(left - right) / (abs(left) + 1e-30))
