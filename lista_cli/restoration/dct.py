"""The orthonormal 2-D DCT-II and its inverse via the real FFT (numpy has no DCT): the
transform that diagonalises a symmetric blur with reflected boundaries."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def _twiddles(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cos and sin of pi k / 2N for k = 0 .. N-1, and the orthonormal weights w_k."""
    angle = np.pi * np.arange(n) / (2 * n)
    weights = np.full(n, math.sqrt(2.0 / n))
    weights[0] = math.sqrt(1.0 / n)
    return np.cos(angle), np.sin(angle), weights


def _dct_last(x: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II along the last axis: X_k = w_k sum_n x_n cos(pi k (n + 1/2) / N).

    Makhoul's algorithm: reorder v = (x_0, x_2, ..., x_3, x_1), then X_k = Re(e^(-i pi k / 2N)
    V_k) with V = FFT(v), one real FFT of length N; for k > N/2, V_k = conj(V_(N-k))."""
    n = x.shape[-1]
    cos, sin, weights = _twiddles(n)
    v = np.concatenate([x[..., 0::2], x[..., 1::2][..., ::-1]], axis=-1)
    half = np.fft.rfft(v, axis=-1)  # V_0 .. V_(N/2)
    count = half.shape[-1]
    out = np.empty(x.shape, dtype=np.float64)
    # Re(e^(-i t) V) = cos t Re V + sin t Im V
    out[..., :count] = cos[:count] * half.real + sin[:count] * half.imag
    mirrored = half[..., 1 : n - count + 1][..., ::-1]  # V_(N-k) for k = count .. N-1
    out[..., count:] = cos[count:] * mirrored.real - sin[count:] * mirrored.imag
    out *= weights
    return out


def _idct_last(coeffs: np.ndarray) -> np.ndarray:
    """Inverse of `_dct_last` (orthonormal DCT-III), Makhoul's algorithm backwards:
    V_k = e^(i pi k / 2N) (X_k - i X_(N-k)) (X_N = 0) is Hermitian, v = IRFFT(V), then
    x_(2m) = v_m and x_(2m+1) = v_(N-1-m)."""
    n = coeffs.shape[-1]
    cos, sin, weights = _twiddles(n)
    raw = coeffs / weights  # unnormalised DCT-II coefficients X_k
    count = n // 2 + 1
    a = raw[..., :count]
    b = np.zeros_like(a)  # X_(N-k), X_N = 0
    b[..., 1:] = raw[..., n - 1 : n - count : -1]
    spectrum = np.empty(a.shape, dtype=np.complex128)
    # (cos t + i sin t)(a - i b) = (cos t a + sin t b) + i (sin t a - cos t b)
    spectrum.real = cos[:count] * a + sin[:count] * b
    spectrum.imag = sin[:count] * a - cos[:count] * b
    v = np.fft.irfft(spectrum, n=n, axis=-1)
    x = np.empty_like(v)
    x[..., 0::2] = v[..., : (n + 1) // 2]
    x[..., 1::2] = v[..., (n + 1) // 2 :][..., ::-1]
    return x


def dct2(x: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT-II of an (H, W) array (each pass along contiguous rows)."""
    return _dct_last(np.ascontiguousarray(_dct_last(x).T)).T


def idct2(x: np.ndarray) -> np.ndarray:
    """Inverse of `dct2` (orthonormal 2-D DCT-III)."""
    return _idct_last(np.ascontiguousarray(_idct_last(x).T)).T
