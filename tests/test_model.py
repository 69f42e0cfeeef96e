import pytest
import torch

from lista_cli.model import UnfoldedISTA, fit_subspace, soft_threshold


def ista_reference(x, basis, lam, step, iterations, scale):
    """Plain float64 ISTA: s <- soft(s + eta Q (x - s), eta lam scale) with a dense Q."""
    dim = x.shape[-1]
    projector = torch.eye(dim, dtype=torch.float64) - basis @ basis.T
    s = torch.zeros_like(x)
    for _ in range(iterations):
        s = soft_threshold(s + step * (x - s) @ projector, step * lam * scale)
    return s


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
        mean, basis, layers=layers, step=step, lam=lam, kind=kind, learn=False, relative_threshold=relative
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
    model = UnfoldedISTA(mean, basis, layers=10, lam=0.3, kind="full", learn=False, relative_threshold=False)
    expected = ista_reference(patches.double() - mean.double(), basis.double(), 0.3, 1.0, 10, 1.0)
    assert float((model(patches).double() - expected).abs().max()) < 1e-5


@pytest.mark.parametrize("kind", ["full", "cp", "alista"])
def test_gradients_reach_every_parameter(kind):
    gen = torch.Generator().manual_seed(1)
    mean, basis, patches = _random_problem(gen)
    model = UnfoldedISTA(mean, basis, layers=4, lam=0.1, kind=kind, learn=True)
    model(patches).pow(2).sum().backward()
    names = [name for name, _ in model.named_parameters()]
    assert "log_theta" in names
    for name, param in model.named_parameters():
        assert param.grad is not None and float(param.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_gray_and_rgb(channels):
    dim = channels * 5 * 5
    gen = torch.Generator().manual_seed(channels)
    mean, basis = fit_subspace(torch.rand(300, dim, generator=gen), energy=0.7)
    model = UnfoldedISTA(mean, basis, layers=3)
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
    model = UnfoldedISTA(mean, basis, layers=12, lam=0.3, kind=kind, learn=False, relative_threshold=False, fista=True)
    expected = fista_reference(patches.double() - mean.double(), basis.double(), 0.3, 12, 1.0)
    assert float((model.double()(patches.double()) - expected).abs().max()) < 1e-5
    plain = UnfoldedISTA(mean, basis, layers=12, lam=0.3, kind=kind, learn=False, relative_threshold=False)
    assert float((plain.double()(patches.double()) - expected).abs().max()) > 1e-4  # momentum matters
