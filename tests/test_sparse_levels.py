"""Sparse divisors: each patch's S divided by how much more S the normal patches with the
same nearest bank code carry than most codes (sparse_levels.py)."""

import numpy as np
import pytest
import torch

from lista_cli.config import Config
from lista_cli.detection.model import patches
from lista_cli.detection.scoring.detector import Detector
from lista_cli.detection.scoring.resampling import downsample
from lista_cli.detection.training import sparse_levels
from lista_cli.detection.training.scales import init_scale


def _images(gen: torch.Generator, channels: int, count: int = 6) -> list[torch.Tensor]:
    """Random textures of odd sizes; every third has a bright bar (a rare normal structure)."""
    images = []
    for index in range(count):
        image = 0.4 + 0.1 * torch.rand(channels, 29 + index, 33 - index, generator=gen)
        if index % 3 == 0:
            image[:, 5:9, :] = 0.95
        images.append(image)
    return images


def _config(patch: int, stride: int) -> Config:
    config = Config()
    config.patch.size, config.patch.stride = patch, stride
    config.score.bank_size = 61
    return config


def _reference_divisors(scale, images, patch, stride, channels) -> np.ndarray:
    """float64: per patch the mean over its pixels of ||s|| over channels, to the code
    nearest in units of its radius (brute force), per code the mean shrunk to the overall
    mean, divided by the 0.9 quantile, floored at 1, square root."""
    model, bank = scale.model, scale.bank
    centres, radii = bank.codes.double().numpy(), bank.radii.double().numpy()
    basis, mean = bank.basis.double().numpy(), model.mean.double().numpy()
    levels, owners = [], []
    for image in images:
        small = downsample(image[None], scale.factor)
        rows = patches.unfold(small, patch, stride)
        with torch.no_grad():
            sparse = model(rows)[0].double().numpy()  # (N, C p p)
        norms = np.sqrt((sparse.reshape(len(sparse), channels, patch * patch) ** 2).sum(axis=1))
        levels.append(norms.mean(axis=1))
        codes = (rows[0].double().numpy() - mean) @ basis
        distance = np.sqrt(((codes[:, None] - centres[None]) ** 2).sum(-1)) / radii
        owners.append(distance.argmin(axis=1))
    levels, owners = np.concatenate(levels), np.concatenate(owners)
    prior = sparse_levels.PRIOR_PATCHES
    sums = np.array([levels[owners == j].sum() for j in range(len(centres))])
    counts = np.array([(owners == j).sum() for j in range(len(centres))])
    code_levels = (sums + prior * levels.mean()) / (counts + prior)
    return np.sqrt(np.maximum(code_levels / np.quantile(code_levels, sparse_levels.QUANTILE), 1.0))


@pytest.mark.parametrize(("channels", "factor", "patch", "stride"), [(1, 1, 4, 2), (3, 2, 5, 3), (1, 1, 3, 1)])
def test_divisors_equal_a_float64_reference(channels, factor, patch, stride):
    gen = torch.Generator().manual_seed(31 + channels + factor)
    images = _images(gen, channels)
    scale = init_scale(images, _config(patch, stride), factor)
    got = sparse_levels.sparse_divisors(scale, images, patch, stride, channels, seed=0)
    expected = _reference_divisors(scale, images, patch, stride, channels)
    assert got.shape == (len(scale.bank.codes),) and (got >= 1).all()
    assert (expected > 1.001).sum() >= 2  # some codes carry more S than most: the test divides
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)


def test_past_the_patch_budget_a_share_of_patches_is_assigned(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    images = _images(gen, 1)
    scale = init_scale(images, _config(4, 2), 1)
    full = sparse_levels.sparse_divisors(scale, images, 4, 2, 1, seed=0)
    monkeypatch.setattr(sparse_levels, "MAX_PATCHES", 300)
    sampled = sparse_levels.sparse_divisors(scale, images, 4, 2, 1, seed=0)
    again = sparse_levels.sparse_divisors(scale, images, 4, 2, 1, seed=0)
    assert torch.equal(sampled, again)  # seeded
    assert (sampled >= 1).all() and not torch.equal(sampled, full)
    # at most a share 1 - QUANTILE of the codes lie above the quantile (fewer when levels tie)
    assert int((sampled > 1).sum()) <= (1 - sparse_levels.QUANTILE) * len(sampled) + 1


def test_each_patch_s_is_divided_by_its_blended_divisor_before_folding():
    gen = torch.Generator().manual_seed(17)
    channels, patch, stride = 3, 4, 3
    images = _images(gen, channels)
    config = _config(patch, stride)
    scale = init_scale(images, config, 1)
    scale.bank.sparse_divisors = 1 + 3 * torch.rand(len(scale.bank.codes), generator=gen)
    detector = Detector([scale], config, channels)
    image = 0.4 + 0.1 * torch.rand(1, channels, 31, 26, generator=gen)
    image[..., 10:14, 3:20] = 0.9
    with torch.no_grad():
        got = detector.scale_components(scale, image)[0, 0].double().numpy()
        rows = patches.unfold(image, patch, stride)
        sparse = scale.model(rows)[0].double().numpy()
        divisors = scale.bank.match(scale.bank.codes_of(rows[0] - scale.model.mean)).sparse_divisors.double().numpy()
    norms = np.sqrt((sparse.reshape(len(sparse), channels, patch * patch) ** 2).sum(axis=1)) / divisors[:, None]
    # fold by hand: each patch's values added where it lies on the padded image, then averaged
    height, width = patches.padded_size(31, patch, stride), patches.padded_size(26, patch, stride)
    total, count = np.zeros((height, width)), np.zeros((height, width))
    columns = (width - patch) // stride + 1
    for index, values in enumerate(norms):
        top, left = stride * (index // columns), stride * (index % columns)
        total[top : top + patch, left : left + patch] += values.reshape(patch, patch)
        count[top : top + patch, left : left + patch] += 1
    np.testing.assert_allclose(got, (total / count)[:31, :26], rtol=1e-5, atol=1e-7)
    assert (divisors > 1).all()  # every patch damped, so this checks the division too


def test_training_sets_the_divisors_and_says_so(mvtec, tmp_path):
    from typer.testing import CliRunner

    from lista_cli.cli import app
    from lista_cli.detection.scoring.checkpoint import load_checkpoint

    from .conftest import FAST_TRAIN, train_tiny

    result = CliRunner().invoke(app, ["train", str(mvtec), "--out", str(tmp_path / "on.pt"), *FAST_TRAIN[:-1]])
    assert result.exit_code == 0, result.output
    for scale in load_checkpoint(tmp_path / "on.pt").scales:
        divisors = scale.bank.sparse_divisors
        assert len(divisors) == len(scale.bank.codes) and (divisors >= 1).all()
        damped = f"S divided near {int((divisors > 1).sum())} of {len(divisors)} bank codes"
        assert f"scale 1/{scale.factor}: " in result.output and damped in result.output
        assert f"by at most {float(divisors.max()):.3g}" in result.output
    off = load_checkpoint(train_tiny(mvtec, tmp_path / "off.pt", "--set", "score.sparse_damping=false"))
    assert not any(len(scale.bank.sparse_divisors) for scale in off.scales)
