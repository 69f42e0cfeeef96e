"""Level damping: a map hotter as a whole than normal maps is divided by its own level,
at most as far as the hottest normal map."""

import numpy as np
import pytest
import torch

from lista_cli.detection.model.model import lower_median as lower_median_torch
from lista_cli.detection.model.model import topk_lower_median
from lista_cli.detection.scoring.postprocess import Finish, lower_median
from lista_cli.detection.training.levels import QUANTILE, level_reference


def map_levels(maps: torch.Tensor) -> torch.Tensor:
    return torch.tensor([float(lower_median(m.numpy())) for m in maps])


def damp_level(maps: torch.Tensor, reference: float | None, cap: float) -> torch.Tensor:
    finish = Finish(level_reference=reference, level_cap=cap)
    return torch.stack([torch.from_numpy(finish.damp_level(m.numpy())) for m in maps])


def test_map_levels_are_the_lower_median_at_odd_and_even_sizes():
    gen = torch.Generator().manual_seed(11)
    for height, width in [(7, 13), (8, 10), (1, 1), (2, 1)]:
        maps = torch.rand(3, height, width, generator=gen)
        for got, m in zip(map_levels(maps).tolist(), maps.numpy(), strict=True):
            ordered = np.sort(m.ravel())
            assert got == ordered[(ordered.size + 1) // 2 - 1]


def test_level_reference_is_the_quantile_and_the_largest_ratio():
    rng = np.random.default_rng(14)
    for count in (1, 2, 7, 40, 201):
        values = rng.lognormal(0.0, 0.5, count)
        reference, cap = level_reference(values.tolist())
        assert reference == pytest.approx(np.quantile(values, QUANTILE), rel=1e-12)
        assert cap == pytest.approx(max(1.0, values.max() / reference), rel=1e-12)
    assert level_reference([5.0]) == (5.0, 1.0)


def test_damp_level_matches_a_per_map_reference_and_only_damps():
    gen = torch.Generator().manual_seed(12)
    gains = torch.tensor([0.5, 1.0, 1.8, 3.0, 9.0])  # colder, typical, hotter, at the cap, beyond it
    maps = torch.rand(5, 9, 14, generator=gen) * gains[:, None, None]
    reference, cap = float(map_levels(maps[1:2])[0]), 2.5
    got = damp_level(maps, reference, cap).numpy()
    for index, m in enumerate(maps.numpy().astype(np.float64)):
        level = np.sort(m.ravel())[(m.size + 1) // 2 - 1]
        divisor = min(max(level / reference, 1.0), cap)
        np.testing.assert_allclose(got[index], m / divisor, rtol=1e-6)
    assert np.array_equal(got[:2], maps[:2].numpy())  # at or below the reference: untouched
    assert got[4].max() > 2 * got[3].max()  # beyond the cap the excess stays


def test_a_model_without_a_reference_is_not_damped():
    maps = torch.rand(2, 5, 6)
    assert torch.equal(damp_level(maps, None, 1.0), maps)


def test_the_traced_lower_median_is_numpys():
    """model.topk_lower_median (TopK, for the noise scale in the graph) = model.lower_median
    (numpy's partition in eager mode) = postprocess.lower_median = torch.median, at odd and
    even counts, also row by row."""
    gen = torch.Generator().manual_seed(13)
    for count in (1, 2, 7, 10, 4097):
        values = torch.rand(count, generator=gen)
        expected = float(values.median())
        assert float(topk_lower_median(values)) == float(lower_median_torch(values)) == expected
        assert float(lower_median(values.numpy())) == expected
    rows = torch.rand(5, 33, generator=gen)[:, ::2]  # strided, as the noise scale's sample
    assert torch.equal(lower_median_torch(rows), rows.median(dim=1).values)
    assert torch.equal(topk_lower_median(rows), rows.median(dim=1).values)


def test_training_measures_the_reference_unless_turned_off(tiny_trained, mvtec, tmp_path):
    from typer.testing import CliRunner

    from lista_cli.cli import app
    from lista_cli.detection.scoring.checkpoint import load_checkpoint

    from .conftest import FAST_TRAIN, train_tiny

    calibration = load_checkpoint(tiny_trained[0]).calibration
    assert calibration.level_reference > 0 and calibration.level_cap >= 1.0
    off = train_tiny(mvtec, tmp_path / "off.pt", "--set", "score.level_damping=false")
    assert load_checkpoint(off).calibration.level_reference is None
    result = CliRunner().invoke(app, ["train", str(mvtec), "--out", str(tmp_path / "on.pt"), *FAST_TRAIN[:-1]])
    assert result.exit_code == 0, result.output
    on = load_checkpoint(tmp_path / "on.pt").calibration
    assert f"exceeds {on.level_reference:.4g}" in result.output and f"at most {on.level_cap:.3g}" in result.output
