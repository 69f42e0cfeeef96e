"""The orthonormal 2-D DCT-II and its inverse via the real FFT (numpy has no DCT): the
transform that diagonalises a symmetric blur with reflected boundaries."""

from __future__ import annotations

import math

import numpy as np


def _ortho_weights(n: int, ndim: int) -> np.ndarray:
    weights = np.full((n,) + (1,) * (ndim - 1), math.sqrt(2.0 / n))
    weights[0] = math.sqrt(1.0 / n)
    return weights


def _dct_axis(x: np.ndarray, axis: int) -> np.ndarray:
    """Orthonormal DCT-II along `axis`: X_k = w_k sum_n x_n cos(pi k (n + 1/2) / N).

    Makhoul's algorithm: reorder v = (x_0, x_2, ..., x_3, x_1), then X_k = Re(e^(-i pi k / 2N)
    V_k) with V = FFT(v), one real FFT of length N (V_k for k > N/2 is conj(V_(N-k)))."""
    x = np.moveaxis(x, axis, 0)
    n = x.shape[0]
    v = np.concatenate([x[0::2], x[1::2][::-1]], axis=0)
    half = np.fft.rfft(v, axis=0)  # V_0 .. V_(N/2)
    spectrum = np.concatenate([half, np.conj(half[1 : n - n // 2][::-1])], axis=0)  # V_0 .. V_(N-1)
    k = np.arange(n).reshape((-1,) + (1,) * (x.ndim - 1))
    out = np.real(np.exp(-1j * np.pi * k / (2 * n)) * spectrum)
    return np.moveaxis(out * _ortho_weights(n, x.ndim), 0, axis)


def _idct_axis(coeffs: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of `_dct_axis` (orthonormal DCT-III), Makhoul's algorithm backwards:
    V_k = e^(i pi k / 2N) (X_k - i X_(N-k)) (X_N = 0) is Hermitian, v = IRFFT(V), then
    x_(2m) = v_m and x_(2m+1) = v_(N-1-m)."""
    c = np.moveaxis(coeffs, axis, 0)
    n = c.shape[0]
    raw = c / _ortho_weights(n, c.ndim)  # unnormalised DCT-II coefficients X_k
    count = n // 2 + 1
    k = np.arange(count).reshape((-1,) + (1,) * (c.ndim - 1))
    mirrored = np.concatenate([np.zeros_like(raw[:1]), raw[:0:-1]], axis=0)[:count]  # X_(N-k), X_N = 0
    v = np.fft.irfft(np.exp(1j * np.pi * k / (2 * n)) * (raw[:count] - 1j * mirrored), n=n, axis=0)
    x = np.empty_like(v)
    x[0::2] = v[: (n + 1) // 2]
    x[1::2] = v[(n + 1) // 2 :][::-1]
    return np.moveaxis(x, 0, axis)


def dct2(x: np.ndarray) -> np.ndarray:
    return _dct_axis(_dct_axis(x, 0), 1)


def idct2(x: np.ndarray) -> np.ndarray:
    return _idct_axis(_idct_axis(x, 0), 1)
