"""Tikhonov deconvolution in closed form: x = (A^T A + alpha D^T D)^-1 A^T y.

A is the blur (lista_cli.restoration.blur), D the identity (classical Tikhonov) or the discrete
Laplacian (smoothness). Both are diagonalised by one transform T, so the solve is a
division per coefficient:  X = conj(a) Y / (|a|^2 + alpha |l|^2)  with a, l the
eigenvalues of A and D:
    periodic boundary          -> T = 2-D FFT
    reflect, symmetric PSF     -> T = orthonormal 2-D DCT-II (exact for the half-sample
                                  symmetric boundary, so edges do not ring)
    reflect, asymmetric PSF    -> symmetric padding, then FFT (an approximation)
alpha is given, or chosen from the data: the unbiased predictive risk estimate (UPRE) or
the discrepancy principle ||A x - y||^2 = n sigma^2 (sigma given, or estimated from the
image by the MAD of its finest Haar wavelet coefficients), or generalised
cross-validation (GCV), which needs no sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ListaError
from .alpha import alpha_discrepancy, alpha_gcv, alpha_upre, estimate_noise
from .blur import Blur, psf_is_symmetric, symmetric_index
from .dct import dct2, idct2

if TYPE_CHECKING:
    from .alpha import _CurveBins

LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
REGULARISERS = ("identity", "laplacian")
ALPHA_RULES = ("upre", "discrepancy", "gcv")
DEFAULT_RULE = {"laplacian": "upre", "identity": "discrepancy"}


class DeblurError(ListaError):
    """A deblurring set-up that cannot be used (exit code 1)."""


# --- the diagonalised problem ------------------------------------------------------------


@dataclass
class Spectral:
    """A and D^T D as eigenvalues in one transform; `scale` makes ||r||^2 = scale * sum |R|^2."""

    forward: object
    inverse: object
    a: np.ndarray  # eigenvalues of A (complex for the FFT)
    dtd: np.ndarray  # eigenvalues of D^T D (real, >= 0)
    scale: float
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) after padding
    bins: _CurveBins | None = None  # the alpha rules' binning (alpha.py), made on first use

    @cached_property
    def power(self) -> np.ndarray:
        """|a|^2."""
        return np.square(np.abs(self.a))


def _cosine_eigenvalues(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Eigenvalues in the DCT-II basis of a symmetric kernel under the half-sample symmetric
    boundary: sum_ij kernel[i, j] cos(pi k i / H) cos(pi l j / W), offsets from the centre."""
    (kh, kw), (height, width) = kernel.shape, shape
    rows = np.cos(np.pi * np.outer(np.arange(height), np.arange(kh) - kh // 2) / height)
    cols = np.cos(np.pi * np.outer(np.arange(width), np.arange(kw) - kw // 2) / width)
    return rows @ kernel @ cols.T


def _fourier_eigenvalues(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Eigenvalues (the OTF) of a centred kernel under periodic convolution, by small DFT matrices."""
    (kh, kw), (height, width) = kernel.shape, shape
    rows = np.exp(-2j * np.pi * np.outer(np.arange(height), np.arange(kh) - kh // 2) / height)
    cols = np.exp(-2j * np.pi * np.outer(np.arange(width), np.arange(kw) - kw // 2) / width)
    return rows @ kernel @ cols.T


def spectral(blur: Blur, shape: tuple[int, int], reg: str) -> Spectral:
    """Diagonalise A and D for an image of `shape` under the blur's boundary rule."""
    if reg not in REGULARISERS:
        raise DeblurError(f"--reg must be one of {', '.join(REGULARISERS)}, got {reg!r}")
    height, width = shape
    if blur.psf.shape[0] > 2 * height or blur.psf.shape[1] > 2 * width:
        raise DeblurError(
            f"the PSF ({blur.psf.shape[1]}x{blur.psf.shape[0]}) is too large for a {width}x{height} image"
        )
    if blur.boundary == "reflect" and psf_is_symmetric(blur.psf):
        a = _cosine_eigenvalues(blur.psf, shape)
        dtd = np.ones(shape) if reg == "identity" else _cosine_eigenvalues(LAPLACIAN, shape) ** 2
        return Spectral(dct2, idct2, a, dtd, 1.0)
    crop = None
    if blur.boundary == "reflect":  # asymmetric PSF: pad symmetrically, solve periodically
        pad_h, pad_w = 2 * blur.radius[0] + 2, 2 * blur.radius[1] + 2
        crop = (pad_h, pad_w, height, width)
        height, width = height + 2 * pad_h, width + 2 * pad_w
    a = _fourier_eigenvalues(blur.psf, (height, width))
    dtd = (
        np.ones((height, width)) if reg == "identity" else np.abs(_fourier_eigenvalues(LAPLACIAN, (height, width))) ** 2
    )
    return Spectral(np.fft.fft2, lambda z: np.real(np.fft.ifft2(z)), a, dtd, 1.0 / (height * width), crop)


def _channels(image: np.ndarray) -> np.ndarray:
    return image[..., None] if image.ndim == 2 else image


def _prepare(spec: Spectral, image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> coefficients (C, H', W') in the transform domain."""
    image = _channels(image)
    if spec.crop:
        top, left, _, _ = spec.crop
        rows = symmetric_index(image.shape[0], top)
        cols = symmetric_index(image.shape[1], left)
        image = image[np.ix_(rows, cols)]
    return np.stack([spec.forward(image[..., c]) for c in range(image.shape[-1])])


def _solution_factor(spec: Spectral, alpha: float) -> np.ndarray:
    """The Tikhonov solution per coefficient: X = conj(a) Y / (|a|^2 + alpha dtd) (0 where
    both vanish)."""
    denominator = spec.power + alpha * spec.dtd
    denominator[denominator <= 0] = np.inf
    return (np.conj(spec.a) if np.iscomplexobj(spec.a) else spec.a) / denominator


@dataclass
class DeblurResult:
    image: np.ndarray  # same shape as the input
    alpha: float
    sigma: float | None
    method: str  # 'dct', 'fft' or 'fft-padded'


def check_options(alpha: float | str, reg: str, rule: str | None, noise_sigma: float | None = None) -> float | str:
    """The options of a deblur, checked once for a whole batch: alpha 'auto' or a positive
    finite number (a string from the command line is parsed), a known regulariser and rule,
    a noise level >= 0; a rule or noise level that alpha would ignore is an error.
    -> alpha as 'auto' or a float; raises DeblurError naming the option."""
    if reg not in REGULARISERS:
        raise DeblurError(f"--reg must be one of {', '.join(REGULARISERS)}, got {reg!r}")
    if rule is not None and rule not in ALPHA_RULES:
        raise DeblurError(f"--alpha-rule must be one of {', '.join(ALPHA_RULES)}, got {rule!r}")
    if noise_sigma is not None and not (math.isfinite(noise_sigma) and noise_sigma >= 0):
        raise DeblurError(f"--noise-sigma must be a noise std >= 0 (in [0,1] units), got {noise_sigma:g}")
    if alpha == "auto":
        if rule == "gcv" and noise_sigma is not None:
            raise DeblurError("--noise-sigma has no effect with --alpha-rule gcv (GCV needs no noise level)")
        return alpha
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise DeblurError(f"--alpha must be 'auto' or a positive number, got {alpha!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise DeblurError(f"--alpha must be a positive finite number, got {alpha}")
    if rule is not None:
        raise DeblurError(f"--alpha-rule {rule} has no effect with --alpha {alpha}; give --alpha auto to use it")
    if noise_sigma is not None:
        raise DeblurError(f"--noise-sigma has no effect with --alpha {alpha}; give --alpha auto to use it")
    return value


class Deconvolver:
    """Tikhonov deblurring of many images with one blur and one set of options: the
    diagonalised problem (eigenvalues, the alpha rules' binning) is made once per image
    size, not once per image. alpha a number or 'auto'.

    The default rule for 'auto' is the one the benchmark found closest to the oracle alpha:
    UPRE with the Laplacian, the discrepancy principle with the identity."""

    def __init__(
        self,
        blur: Blur,
        alpha: float | str = "auto",
        reg: str = "identity",
        noise_sigma: float | None = None,
        rule: str | None = None,
    ) -> None:
        self.alpha = check_options(alpha, reg, rule, noise_sigma)
        self.blur, self.reg, self.noise_sigma = blur, reg, noise_sigma
        self.rule = rule or DEFAULT_RULE[reg]
        self._spectra: dict[tuple[int, int], Spectral] = {}

    def spectral(self, shape: tuple[int, int]) -> Spectral:
        if shape not in self._spectra:
            self._spectra = {shape: spectral(self.blur, shape, self.reg)}  # keep one: sizes rarely alternate
        return self._spectra[shape]

    def __call__(self, image: np.ndarray) -> DeblurResult:
        """Deblur an (H, W) or (H, W, C) float image."""
        y = np.asarray(image, dtype=np.float64)
        spec = self.spectral(y.shape[:2])
        coeffs = _prepare(spec, y)  # (C, H', W')
        sigma = None
        if self.alpha == "auto":
            if self.rule == "gcv":
                alpha_value = alpha_gcv(spec, coeffs)
            else:
                sigma = max(estimate_noise(y) if self.noise_sigma is None else float(self.noise_sigma), 1e-6)
                rules = {"discrepancy": alpha_discrepancy, "upre": alpha_upre}
                alpha_value = rules[self.rule](spec, coeffs, sigma)
        else:
            alpha_value = float(self.alpha)
        solution = _solution_factor(spec, alpha_value)
        out = np.stack([spec.inverse(solution * c) for c in coeffs], axis=-1)
        if spec.crop:
            top, left, height, width = spec.crop
            out = out[top : top + height, left : left + width]
        out = out if image.ndim == 3 else out[..., 0]
        method = "dct" if spec.forward is dct2 else ("fft-padded" if spec.crop else "fft")
        return DeblurResult(out, alpha_value, sigma, method)


def tikhonov(
    image: np.ndarray,
    blur: Blur,
    alpha: float | str = "auto",
    reg: str = "identity",
    noise_sigma: float | None = None,
    rule: str | None = None,
) -> DeblurResult:
    """Deblur one (H, W) or (H, W, C) float image; alpha a number or 'auto' (`Deconvolver`)."""
    return Deconvolver(blur, alpha, reg, noise_sigma, rule)(image)
