import numpy as np
import pytest
import torch

from lista_cli.config import ModelConfig
from lista_cli.detection.model.model import (
    IMAGE_RANK,
    PrincipalAxes,
    UnfoldedISTA,
    image_directions,
    image_low_rank,
    soft_threshold,
)


def ista_reference(x, basis, lam, step, iterations, scale):
    """Plain float64 ISTA: s <- soft(s + eta Q (x - s), eta lam scale) with a dense Q."""
    dim = x.shape[-1]
    projector = torch.eye(dim, dtype=torch.float64) - basis @ basis.T
    s = torch.zeros_like(x)
    for _ in range(iterations):
        s = soft_threshold(s + step * (x - s) @ projector, step * lam * scale)
    return s


def fit_subspace(rows: torch.Tensor, energy: float, max_rank: int | None = None):
    """The mean and the subspace U a model is built on, as training builds them."""
    axes = PrincipalAxes(rows)
    return axes.mean.float(), axes.basis(energy, max_rank)


def _random_problem(gen, batch=2, count=23, dim=27, rank=4):
    data = torch.randn(batch * count * 4, dim, generator=gen, dtype=torch.float64)
    mean, basis = fit_subspace(data, energy=0.5, max_rank=rank)
    patches = torch.randn(batch, count, dim, generator=gen) * 0.5 + mean.float()
    return mean, basis, patches


@pytest.mark.parametrize("kind", ["full", "cp", "alista"])
@pytest.mark.parametrize("relative", [False, True])
def test_untrained_equals_ista(kind, relative):
    gen = torch.Generator().manual_seed(7)
    mean, basis, patches = _random_problem(gen)
    lam, step, layers = 0.3, 0.8, 10
    model = UnfoldedISTA(
        mean,
        basis,
        ModelConfig(layers=layers, step=step, lam=lam, layer_type=kind, learn=False, relative_threshold=relative),
    ).double()
    out = model(patches.double())
    x = patches.double() - mean.double()
    scale = model.noise_scale(x) if relative else 1.0
    expected = ista_reference(x, basis.double(), lam, step, layers, scale)
    assert out.shape == patches.shape
    assert float((out - expected).abs().max()) < 1e-5
    assert float(expected.abs().sum()) > 0  # the problem is not trivially all-zero


def test_float32_model_close_to_float64_reference():
    gen = torch.Generator().manual_seed(3)
    mean, basis, patches = _random_problem(gen)
    model = UnfoldedISTA(
        mean, basis, ModelConfig(layers=10, lam=0.3, layer_type="full", learn=False, relative_threshold=False)
    )
    expected = ista_reference(patches.double() - mean.double(), basis.double(), 0.3, 1.0, 10, 1.0)
    assert float((model(patches).double() - expected).abs().max()) < 1e-5


@pytest.mark.parametrize("kind", ["full", "cp", "alista"])
def test_gradients_reach_every_parameter(kind):
    gen = torch.Generator().manual_seed(1)
    mean, basis, patches = _random_problem(gen)
    model = UnfoldedISTA(mean, basis, ModelConfig(layers=4, lam=0.1, layer_type=kind, learn=True))
    model(patches).pow(2).sum().backward()
    names = [name for name, _ in model.named_parameters()]
    assert "log_theta" in names
    for name, param in model.named_parameters():
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("threshold_shape", [(), (3, 1, 1), (3, 5, 1)])
def test_soft_threshold_gradient_matches_finite_differences(threshold_shape):
    """The hand-written backward against float64 finite differences (gradcheck) and against
    autograd through an independent form, sign(x) * relu(|x| - t), on odd shapes."""
    gen = torch.Generator().manual_seed(11)
    values = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    threshold = (0.2 + 0.6 * torch.rand(threshold_shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    # keep every entry away from the kinks at +-t, where the derivative jumps
    gap = values.abs() - threshold.detach()
    values = (values + torch.sign(values) * 0.05 * (gap.abs() < 0.05)).requires_grad_(True)
    assert torch.autograd.gradcheck(soft_threshold, (values, threshold))
    weights = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    (soft_threshold(values, threshold) * weights).sum().backward()
    ours = values.grad.clone(), threshold.grad.clone()
    values.grad = threshold.grad = None
    (torch.sign(values) * torch.relu(values.abs() - threshold) * weights).sum().backward()
    assert torch.allclose(ours[0], values.grad, atol=1e-12)
    assert torch.allclose(ours[1], threshold.grad, atol=1e-12)
    assert float(ours[1].abs().sum()) > 0


def test_soft_threshold_without_grad_matches_numpy_and_carries_a_nan_threshold():
    """The no-grad paths (one-pass for a scalar, two passes otherwise) against numpy on odd
    shapes; a NaN threshold (layers wrecked by training) gives NaN, not an error."""
    rng = np.random.default_rng(5)
    values = rng.standard_normal((2, 7, 5)).astype(np.float32)
    for threshold in (np.float32(0.3), rng.uniform(0.1, 0.9, (2, 1, 1)).astype(np.float32)):
        expected = np.sign(values) * np.maximum(np.abs(values) - threshold, 0)
        with torch.no_grad():
            got = soft_threshold(torch.from_numpy(values), torch.as_tensor(threshold))
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    with torch.no_grad():
        wrecked = soft_threshold(torch.from_numpy(values), torch.tensor(float("nan")))
    assert torch.isnan(wrecked).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_gray_and_rgb(channels):
    dim = channels * 5 * 5
    gen = torch.Generator().manual_seed(channels)
    mean, basis = fit_subspace(torch.rand(300, dim, generator=gen), energy=0.7)
    model = UnfoldedISTA(mean, basis, ModelConfig(layers=3))
    assert model(torch.rand(3, 17, dim, generator=gen)).shape == (3, 17, dim)
    with pytest.raises(ValueError, match=f"Expected patches of shape \\(B, N, {dim}\\)"):
        model(torch.rand(17, dim))


def test_subspace_is_orthonormal_and_keeps_energy():
    gen = torch.Generator().manual_seed(5)
    data = torch.randn(500, 12, generator=gen) * torch.linspace(3, 0.1, 12)
    mean, basis = fit_subspace(data, energy=0.9)
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5, rtol=0)
    centred = data - mean
    kept = (centred @ basis).pow(2).sum() / centred.pow(2).sum()
    assert kept >= 0.9 - 1e-3


def fista_reference(x, basis, lam, iterations, scale):
    """Plain float64 FISTA (Beck & Teboulle) with step 1 and a dense Q."""
    projector = torch.eye(x.shape[-1], dtype=torch.float64) - basis @ basis.T
    s = previous = torch.zeros_like(x)
    t = 1.0
    for _ in range(iterations):
        next_t = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = s + ((t - 1) / next_t) * (s - previous)
        previous, s, t = s, soft_threshold(y + (x - y) @ projector, lam * scale), next_t
    return s


@pytest.mark.parametrize("kind", ["full", "cp", "alista"])
def test_fista_switch_equals_fista(kind):
    gen = torch.Generator().manual_seed(11)
    mean, basis, patches = _random_problem(gen)
    model = UnfoldedISTA(
        mean, basis, ModelConfig(layers=12, lam=0.3, layer_type=kind, learn=False, relative_threshold=False, fista=True)
    )
    expected = fista_reference(patches.double() - mean.double(), basis.double(), 0.3, 12, 1.0)
    assert float((model.double()(patches.double()) - expected).abs().max()) < 1e-5
    plain = UnfoldedISTA(
        mean, basis, ModelConfig(layers=12, lam=0.3, layer_type=kind, learn=False, relative_threshold=False)
    )
    assert float((plain.double()(patches.double()) - expected).abs().max()) > 1e-4  # momentum matters


def svt_reference(z, tau):
    """Dense float64 singular-value thresholding of each (N, d) matrix, relative to sigma_1."""
    out = []
    for matrix in z.double():
        u, sigma, vh = torch.linalg.svd(matrix, full_matrices=False)
        shrunk = (sigma - tau * sigma[0]).clamp(min=0)
        out.append(u @ torch.diag(shrunk) @ vh)
    return torch.stack(out)


def right_singular_vectors(z):
    return torch.stack([torch.linalg.svd(m, full_matrices=True)[2].T for m in z.double()])


@pytest.mark.parametrize("shape", [(2, 37, 11), (1, 9, 27), (3, 50, 5)])
@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_image_low_rank_equals_dense_svt(shape, tau):
    gen = torch.Generator().manual_seed(sum(shape))
    z = torch.randn(*shape, generator=gen, dtype=torch.float64)
    z[0] += (
        3
        * torch.randn(shape[1], 1, generator=gen, dtype=torch.float64)
        @ torch.randn(1, shape[2], generator=gen, dtype=torch.float64)
    )  # one strong direction, so the threshold cuts between singular values
    got = image_low_rank(z, right_singular_vectors(z), torch.tensor(tau, dtype=torch.float64))
    torch.testing.assert_close(got, svt_reference(z, tau), atol=1e-8, rtol=0)


@pytest.mark.parametrize("dim", [11, 50, 75])
def test_image_directions_find_the_leading_singular_subspace(dim):
    """Exact for d <= IMAGE_RANK; beyond it, subspace iteration finds a clear leading subspace."""
    gen = torch.Generator().manual_seed(dim)
    strong = torch.randn(2, 200, 5, generator=gen) @ torch.randn(5, dim, generator=gen) * 5
    z = strong + 0.05 * torch.randn(2, 200, dim, generator=gen)
    start = torch.linalg.qr(torch.randn(dim, min(dim, IMAGE_RANK), generator=gen)).Q
    vectors = image_directions(z, start)
    reference = right_singular_vectors(z)
    for b in range(2):
        top = vectors[b].double()[:, -5:]  # ascending order: the last five are the leading ones
        overlap = torch.linalg.svdvals(top.T @ reference[b][:, :5])
        assert float(overlap.min()) > 0.999
    if dim <= IMAGE_RANK:
        got = image_low_rank(z.double(), vectors.double(), torch.tensor(0.02, dtype=torch.float64))
        torch.testing.assert_close(got, svt_reference(z, 0.02), atol=1e-4, rtol=0)


def rpca_reference(x, basis, lam, step, tau, iterations, scale, use_global):
    """float64 alternating robust PCA in the image's own singular directions V (from x):
    L_k = V-domain SVT of x - s, s <- soft(s + eta Q (x - L_k - s), eta lam)."""
    dim = x.shape[-1]
    projector = torch.eye(dim, dtype=torch.float64)
    if use_global:
        projector = projector - basis @ basis.T
    vectors = right_singular_vectors(x)
    s = torch.zeros_like(x)
    for _ in range(iterations):
        coefficients = (x - s) @ vectors
        sigma = coefficients.norm(dim=1, keepdim=True)
        gain = (sigma - tau * sigma.amax(dim=2, keepdim=True)).clamp(min=0) / sigma
        low_rank = (coefficients * gain) @ vectors.transpose(1, 2)
        s = soft_threshold(s + step * (x - low_rank - s) @ projector, step * lam * scale)
    return s


@pytest.mark.parametrize("kind", ["full", "cp", "alista"])
@pytest.mark.parametrize("background", ["image", "both"])
def test_untrained_image_background_equals_alternating_rpca(kind, background):
    gen = torch.Generator().manual_seed(13)
    mean, basis, patches = _random_problem(gen, count=41)
    lam, step, tau, layers = 0.3, 0.9, 0.2, 6
    model = UnfoldedISTA(
        mean,
        basis,
        ModelConfig(
            layers=layers,
            step=step,
            lam=lam,
            layer_type=kind,
            learn=False,
            background=background,
            image_rank_threshold=tau,
        ),
    ).double()
    out = model(patches.double())
    x = patches.double() - mean.double()
    expected = rpca_reference(x, basis.double(), lam, step, tau, layers, model.noise_scale(x), background == "both")
    assert float((out - expected).abs().max()) < 1e-5  # W was built in float32
    assert float(expected.abs().sum()) > 0
    # the image's own low rank changes the answer: it is not the global model in disguise
    plain = UnfoldedISTA(
        mean, basis, ModelConfig(layers=layers, step=step, lam=lam, layer_type=kind, learn=False)
    ).double()
    assert float((plain(patches.double()) - expected).abs().max()) > 1e-3


@pytest.mark.parametrize("background", ["image", "both"])
def test_gradients_reach_image_background_thresholds(background):
    gen = torch.Generator().manual_seed(2)
    mean, basis, patches = _random_problem(gen)
    model = UnfoldedISTA(
        mean, basis, ModelConfig(layers=4, lam=0.1, layer_type="cp", learn=True, background=background)
    )
    model(patches).pow(2).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert float(param.grad.abs().sum()) > 0, name
    assert "log_tau" in dict(model.named_parameters())


def test_image_background_handles_a_flat_image():
    """A constant image has a rank-1 patch matrix with d - 1 zero singular values."""
    mean = torch.zeros(16)
    basis = torch.eye(16)[:, :2]
    model = UnfoldedISTA(mean, basis, ModelConfig(layers=3, layer_type="cp", learn=True, background="both"))
    out = model(torch.full((1, 30, 16), 0.4))
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
