"""ISTA for robust PCA on patches, deep-unfolded (LISTA): one module, learning on or off.

A patch row x = m - mu is background in span(U) plus a sparse defect s. With the
projector Q = I - U U^T onto what normal texture cannot explain, ISTA solves
    min_s 1/2 ||Q (x - s)||^2 + lam ||s||_1
by  s_{k+1} = soft(s_k + eta Q (x - s_k), eta lam),  s_0 = 0.
LISTA learns the same layers:  s_{k+1} = soft(W_e x + W_s s_k, theta_k)  with
    full   : W_e, W_s free (d x d), init W_e = eta Q, W_s = I - eta Q
    cp     : one W, W_e = W, W_s = I - W (LISTA-CP), init W = eta Q
    alista : Q fixed, a step gamma_k per layer (ALISTA-style), init gamma_k = eta
and theta_k = exp(log_theta_k) [* sigma], init eta lam.

`background` chooses what explains normal texture (README, "Background models"):
    global : the training subspace U alone (the layers above);
    image  : the image's own repeating structure: each layer first takes a low-rank
             estimate of the image's patch matrix, L_k = SVT(X - S_{k-1}, tau_k sigma_1)
             (singular-value thresholding relative to the largest singular value sigma_1,
             as in CORONA), then the sparse step on X - L_k with Q = I (W init eta I);
             with eta = 1 that is alternating robust PCA, S_k = soft(X - L_k, theta_k);
    both   : L_k as for image, and the sparse step keeps Q = I - U U^T.
tau_k = exp(log_tau_k) is learned per layer. With `fista`, each layer starts from
FISTA's extrapolated point (Beck & Teboulle 2009), the accelerated baseline. With `relative_threshold`, sigma
is a robust noise scale of the image's own residual Q x (1.4826 * median |Q x|), so
bright, dark and low-contrast images share the thresholds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...config import ModelConfig

LAYER_KINDS = ("full", "cp", "alista")
# The per-image noise scale (noise_scale): NOISE_PER_MAD x the median |Q x| over an evenly
# spaced sample of at most NOISE_SAMPLE entries, at least NOISE_FLOOR.
NOISE_SAMPLE = 32768
NOISE_PER_MAD = 1.4826
NOISE_FLOOR = 1e-4
BACKGROUNDS = ("global", "image", "both")


def topk_lower_median(values: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (...): the lower median (torch.median's), as the largest of the (n + 1) // 2
    smallest values (TopK in ONNX; torch.median and kthvalue have no ONNX form)."""
    count = (values.shape[-1] + 1) // 2
    return values.topk(count, dim=-1, largest=False, sorted=False).values.amax(dim=-1)


def lower_median(values: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (...): the lower median. Traced for export (or with a gradient, or off the
    CPU) by topk_lower_median; otherwise numpy's partition finds the same order statistic,
    30x faster than TopK on 2^15 values here."""
    if torch.compiler.is_exporting() or values.requires_grad or values.device.type != "cpu":
        return topk_lower_median(values)
    middle = (values.shape[-1] + 1) // 2 - 1
    return torch.from_numpy(np.partition(values.numpy(), middle, axis=-1)[..., middle])


class PrincipalAxes:
    """PCA of normal patches (n, d), computed once: the mean and every principal direction,
    from which subspaces keeping different shares of the energy are cut."""

    def __init__(self, patches: torch.Tensor) -> None:
        rows = patches.double()
        self.mean = rows.mean(0)
        centred = rows - self.mean
        covariance = centred.T @ centred / max(len(rows) - 1, 1)  # (d, d)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        self.eigenvalues, self.eigenvectors = eigenvalues.flip(0).clamp(min=0), eigenvectors.flip(1)

    def basis(self, energy: float, max_rank: int | None = None) -> torch.Tensor:
        """An orthonormal basis U (d, r) of the fewest leading directions keeping `energy`."""
        share = torch.cumsum(self.eigenvalues, 0) / self.eigenvalues.sum().clamp(min=1e-30)
        dim = len(self.mean)
        rank = min(int((share < energy).sum().item()) + 1, dim - 1, max_rank or dim)
        return self.eigenvectors[:, :rank].float().contiguous()


IMAGE_RANK = 32  # at most this many of the image's own leading directions form L
SUBSPACE_ROUNDS = 3  # subspace-iteration rounds for those directions


@torch.no_grad()
def image_directions(centred: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """(B, N, d) patch rows -> (B, d, q) leading right singular vectors of each image's matrix.

    Subspace iteration on the d x d Gram matrix from `start` (d, q) (the leading directions
    of normal training patches, close to any normal image's), then Rayleigh-Ritz. Far cheaper
    than a full eigen-decomposition for RGB patches (d = 3 p^2 = 108 with the default 6 px
    patches); exact when q = d."""
    gram = centred.transpose(1, 2) @ centred  # (B, d, d)
    vectors = start.expand(gram.shape[0], -1, -1)
    if start.shape[1] < start.shape[0]:
        for _ in range(SUBSPACE_ROUNDS):
            vectors = torch.linalg.qr(gram @ vectors).Q
    rayleigh = vectors.transpose(1, 2) @ gram @ vectors  # (B, q, q)
    _, rotation = torch.linalg.eigh(rayleigh.double())
    return vectors @ rotation.to(vectors.dtype)


def image_low_rank(residual: torch.Tensor, vectors: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Singular-value thresholding of each image's patch matrix Z, (B, N, d) -> (B, N, d), in
    the fixed directions `vectors` (B, d, q): sigma_i = ||Z v_i|| becomes
    max(sigma_i - tau max_j sigma_j, 0). Exact SVT when the v_i are Z's right singular vectors.
    The sigma_i are held fixed for the gradient (their derivative is undefined at 0); the
    gradient still reaches Z and tau through the shrinkage."""
    coefficients = residual @ vectors  # (B, N, q)
    with torch.no_grad():
        singular = coefficients.square().sum(dim=1).sqrt()  # (B, q)
    cutoff = tau * singular.max(dim=1, keepdim=True).values
    gain = torch.relu(singular - cutoff) / singular.clamp(min=1e-12)  # (B, q) in [0, 1]
    return (coefficients * gain[:, None, :]) @ vectors.transpose(1, 2)


def _leading_directions(basis: torch.Tensor, count: int) -> torch.Tensor:
    """(d, count) orthonormal: the columns of `basis`, completed by a fixed orthonormal basis
    of their complement."""
    dim = basis.shape[0]
    complement = torch.eye(dim) - basis @ basis.T
    filler = torch.linalg.qr(complement @ torch.linspace(1, 2, dim * dim).view(dim, dim).sin()).Q
    return torch.linalg.qr(torch.cat([basis, filler], dim=1)[:, :count]).Q.contiguous()


class _SoftThreshold(torch.autograd.Function):
    """soft(x, t) with a backward from the output's sign: autograd's own through
    x - clamp(x, -t, t) builds masks from comparisons of x against both bounds and took a
    third of a training step. d/dx = |sign(out)| (1 outside [-t, t], 0 inside), d/dt = -sign(out)."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        out = values - torch.clamp(values, min=-threshold, max=threshold)
        ctx.save_for_backward(out.sign())
        ctx.threshold_shape = threshold.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (sign,) = ctx.saved_tensors
        signed = grad * sign
        return signed * sign, -signed.sum_to_size(ctx.threshold_shape)


def soft_threshold(values: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """soft(x, t) = sign(x) * max(|x| - t, 0), computed as x - clamp(x, -t, t) (two passes)."""
    if isinstance(threshold, torch.Tensor):
        if torch.is_grad_enabled() and (values.requires_grad or threshold.requires_grad):
            return _SoftThreshold.apply(values, threshold)
        if threshold.numel() == 1 and not torch.compiler.is_exporting():
            # One image (detect runs them one at a time): torch's one-pass softshrink gives the
            # same values in a tenth of the two passes' time on 256^2 RGB patch rows here.
            # It refuses a NaN or negative threshold (wrecked layers while training validates),
            # which the two passes carry through as NaN / clamp's min > max rule.
            scalar = float(threshold)
            if scalar >= 0 and math.isfinite(scalar):
                return F.softshrink(values, scalar)
    return values - torch.clamp(values, min=-threshold, max=threshold)


class UnfoldedISTA(nn.Module):
    """K unfolded ISTA layers on patch rows; `learn=False` is classical ISTA."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, config: ModelConfig) -> None:
        """The model `config` describes (model.* of the configuration) around a fitted mean
        (d,) and subspace basis U (d, r); its weights start as classical ISTA's."""
        super().__init__()
        kind, layers, step = config.layer_type, config.layers, config.step
        if kind not in LAYER_KINDS:
            raise ValueError(f"model.layer_type must be one of {', '.join(LAYER_KINDS)}, got {kind!r}")
        if config.background not in BACKGROUNDS:
            raise ValueError(f"model.background must be one of {', '.join(BACKGROUNDS)}, got {config.background!r}")
        if layers < 1:
            raise ValueError(f"model.layers must be >= 1, got {layers}")
        dim = mean.shape[0]
        self.kind = kind
        self.layers = layers
        self.relative_threshold = config.relative_threshold
        self.fista = config.fista
        self.background = config.background
        self.register_buffer("mean", mean.clone().float())  # (d,)
        self.register_buffer("basis", basis.clone().float())  # (d, r)
        # What the sparse step cannot explain: Q = I - U U^T, or I when only the image's own
        # low rank is the background.
        projector = torch.eye(dim) if self.background == "image" else torch.eye(dim) - basis @ basis.T
        if kind == "full":
            self.w_enc = nn.Parameter(step * projector)
            self.w_state = nn.Parameter(torch.eye(dim) - step * projector)
        elif kind == "cp":
            self.w_step = nn.Parameter(step * projector)
        else:
            self.gamma = nn.Parameter(torch.full((layers,), float(step)))
        self.log_theta = nn.Parameter(torch.full((layers,), math.log(step * config.lam)))
        if self.background != "global":
            self.log_tau = nn.Parameter(torch.full((layers,), math.log(config.image_rank_threshold)))
            # Start of the subspace iteration for each image's own directions.
            self.register_buffer("image_start", _leading_directions(basis, min(dim, IMAGE_RANK)))
        self.requires_grad_(config.learn)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def project_out(self, rows: torch.Tensor) -> torch.Tensor:
        """Q rows = rows - (rows U) U^T, at O(d r) per row instead of O(d^2)."""
        return rows - (rows @ self.basis) @ self.basis.T

    def explain_out(self, rows: torch.Tensor) -> torch.Tensor:
        """The sparse step's projector: Q rows, or rows itself when background is image."""
        return rows if self.background == "image" else self.project_out(rows)

    def noise_scale(self, centred: torch.Tensor) -> torch.Tensor:
        """Robust per-image scale of the residual, (B, 1, 1); ones without relative thresholds."""
        if not self.relative_threshold:
            return centred.new_ones(centred.shape[0], 1, 1)
        residual = self.project_out(centred).abs().flatten(1)  # (B, N*d)
        # The median of an evenly spaced sample of at most 2^15 entries: as robust, and the
        # full-size median would cost as much as two layers.
        step = max(1, -(-residual.shape[1] // NOISE_SAMPLE))
        sigma = NOISE_PER_MAD * lower_median(residual[:, ::step])
        return sigma.clamp(min=NOISE_FLOOR).view(-1, 1, 1)

    def _layer_input(
        self, k: int, centred: torch.Tensor, point: torch.Tensor, drive: torch.Tensor | None, state: torch.Tensor | None
    ) -> torch.Tensor:
        """The argument of layer k's soft threshold at the current point s (all-zero at k = 0).

        full and cp share the form W_e x + W_s s (for cp, s + W (x - s) with W_e = W and
        W_s = I - W), one fused matrix product per layer on top of the shared drive W_e x."""
        if self.kind == "alista":
            return point + self.gamma[k] * self.explain_out(centred - point)
        if k == 0:
            return drive
        return torch.baddbmm(drive, point, state.T.expand(point.shape[0], -1, -1))

    def forward(self, patches: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, d) raw patch rows -> sparse part S_K, (B, N, d).

        `scale` (B, 1, 1) overrides the per-image noise scale, for when `patches` is a
        sample of an image's rows (training) rather than all of them. With an image
        background, each of the B entries must hold all patches of one image."""
        if patches.dim() != 3 or patches.shape[-1] != self.dim:
            raise ValueError(f"Expected patches of shape (B, N, {self.dim}), got {tuple(patches.shape)}")
        centred = patches - self.mean  # x, (B, N, d)
        thresholds = self.log_theta.exp()  # (K,)
        if scale is None:
            scale = self.noise_scale(centred)  # (B, 1, 1)
        low_rank = self.background != "global"
        taus = self.log_tau.exp() if low_rank else None
        encoder = state = drive = None
        if self.kind == "full":
            encoder, state = self.w_enc, self.w_state
        elif self.kind == "cp":
            encoder, state = self.w_step, torch.eye(self.dim, device=centred.device) - self.w_step
        if encoder is not None and not low_rank:
            drive = centred @ encoder.T  # W_e x is shared by all layers
        if low_rank:  # the image's own directions, once per image; each layer re-weighs them
            vectors = image_directions(centred, self.image_start)
        sparse = torch.zeros_like(centred)
        previous, momentum_t = sparse, 1.0
        for k in range(self.layers):
            point = sparse
            if self.fista:  # FISTA: extrapolate from the last two iterates
                next_t = (1 + math.sqrt(1 + 4 * momentum_t**2)) / 2
                point = sparse + ((momentum_t - 1) / next_t) * (sparse - previous)
                momentum_t = next_t
            previous = sparse
            if low_rank:  # the sparse step sees X - L_k, L_k this image's own low-rank part
                target = centred - image_low_rank(centred - point, vectors, taus[k])
                if encoder is not None:
                    drive = target @ encoder.T
                layer_input = self._layer_input(k, target, point, drive, state)
            else:
                layer_input = self._layer_input(k, centred, point, drive, state)
            sparse = soft_threshold(layer_input, thresholds[k] * scale)
        return sparse
