import numpy as np
import pytest
import torch

from lista_cli.detection.model import typicality
from lista_cli.detection.model.typicality import CodeBank, coreset
from lista_cli.detection.scoring import pixel_maps


@pytest.mark.parametrize("block", [7, 4096])
def test_distances_equal_brute_force_scaled_nearest_neighbour(monkeypatch, block):
    monkeypatch.setattr(typicality, "DISTANCE_BLOCK", block)
    gen = torch.Generator().manual_seed(4)
    basis = torch.linalg.qr(torch.randn(19, 5, generator=gen))[0]
    bank = CodeBank.from_codes(basis, torch.randn(300, 19, generator=gen) @ basis, size=113)
    assert bank.codes.shape == (113, 5) and bank.radii.shape == (113,)
    centred = torch.randn(2, 23, 19, generator=gen)
    got = bank.distances(centred).numpy()
    codes = (centred @ basis).double().numpy()
    normal, radii = bank.codes.double().numpy(), bank.radii.double().numpy()
    distance = np.sqrt(((codes[:, :, None, :] - normal[None, None]) ** 2).sum(-1))
    np.testing.assert_allclose(got, (distance / radii).min(-1), rtol=1e-4, atol=1e-5)
    plain = CodeBank(basis, bank.codes)  # a bank without radii (checkpoint format 2): plain distances
    np.testing.assert_allclose(plain.distances(centred).numpy(), distance.min(-1), atol=1e-4)


def test_radii_are_the_floored_rms_distance_of_each_cell():
    gen = torch.Generator().manual_seed(8)
    codes = torch.randn(400, 3, generator=gen) * torch.tensor([3.0, 1.0, 0.2])
    bank = CodeBank.from_codes(torch.eye(3), codes, size=37)
    points, centres = codes.double().numpy(), bank.codes.double().numpy()
    distance = np.sqrt(((points[:, None] - centres[None]) ** 2).sum(-1))
    owner = distance.argmin(1)
    rms = np.array([np.sqrt((distance[owner == j, j] ** 2).mean()) if (owner == j).any() else 0.0 for j in range(37)])
    floor = 0.5 * np.median(rms[rms > 0])
    np.testing.assert_allclose(bank.radii.numpy(), np.maximum(rms, floor), rtol=1e-4)


def test_a_bank_code_is_at_distance_zero():
    gen = torch.Generator().manual_seed(5)
    basis = torch.eye(6)[:, :3]
    normal = torch.randn(40, 6, generator=gen)
    bank = CodeBank.from_codes(basis, normal @ basis, size=1000)
    assert len(bank.codes) == 40  # fewer rows than the size: all are kept
    distances = bank.distances(normal[None, :5])
    assert float(distances.abs().max()) < 1e-3


def test_patch_values_to_map_averages_covering_patches():
    values = torch.arange(9, dtype=torch.float32).view(1, 9)  # a 3x3 grid of 4x4 patches, stride 2
    got = pixel_maps.patch_values_to_map(values, (8, 8), 4, 2)[0]
    assert got[0, 0] == 0 and got[7, 7] == 8
    assert got[2, 2] == pytest.approx((0 + 1 + 3 + 4) / 4)  # covered by four patches


def _reference_coreset(points: np.ndarray, size: int) -> list[int]:
    """Farthest-point k-centre in float64 with a full distance matrix."""
    distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    chosen = [int(((points - points.mean(0)) ** 2).sum(1).argmin())]
    while len(chosen) < size:
        chosen.append(int(distances[:, chosen].min(1).argmax()))
    return chosen


@pytest.mark.parametrize("n, dim, size", [(257, 3, 17), (90, 11, 89), (5, 2, 5)])
def test_coreset_equals_float64_farthest_point_reference(n, dim, size):
    points = torch.randn(n, dim, generator=torch.Generator().manual_seed(n))
    got = coreset(points, size).tolist()
    expected = _reference_coreset(points.double().numpy(), size)
    assert (got if size < n else sorted(got)) == (expected if size < n else sorted(expected))
    assert len(set(got)) == size


def test_coreset_keeps_a_rare_cluster_that_random_sampling_misses():
    gen = torch.Generator().manual_seed(6)
    common = torch.randn(5000, 4, generator=gen)
    rare = 12.0 + 0.1 * torch.randn(5, 4, generator=gen)  # 0.1 % of the points, far away
    points = torch.cat([common, rare])
    chosen = coreset(points, 32)
    assert (chosen >= 5000).any()
    bank = CodeBank.from_codes(torch.eye(4), points, size=32)
    assert float(bank.distances(rare[None]).max()) < 1.0  # rare normal codes are not "atypical"


@pytest.mark.parametrize("band", [1, 7, 65536])
def test_bank_holds_the_code_of_every_offset_whatever_the_band(monkeypatch, band):
    from lista_cli.detection.model import patches

    monkeypatch.setattr(typicality, "BANK_BAND_PATCHES", band)
    image = torch.rand(3, 50, 37, generator=torch.Generator().manual_seed(9))
    mean, basis = torch.rand(192), torch.linalg.qr(torch.randn(192, 5))[0]
    bank = typicality.build_bank(mean, basis, [image], 10**6, 8, 0)  # a bank that keeps every code
    expected = (patches.unfold(image[None], 8, 1)[0] - mean) @ basis  # all 43 x 30 offsets
    assert bank.codes.shape == expected.shape
    torch.testing.assert_close(bank.codes.sort(dim=0).values, expected.sort(dim=0).values)


def test_leaving_an_image_out_drops_exactly_its_codes():
    gen = torch.Generator().manual_seed(12)
    images = [torch.rand(1, 21, 19, generator=gen) for _ in range(3)]
    mean, basis = torch.rand(64), torch.linalg.qr(torch.randn(64, 4, generator=gen))[0]
    bank = typicality.build_bank(mean, basis, images, 10**6, 8, 0)
    assert bank.origins.tolist() == [i for i in range(3) for _ in range(14 * 12)]
    rows = (typicality.patches.unfold(images[1][None], 8, 1) - mean)[0]
    assert float(bank.distances(rows[None]).max()) < 1e-3  # its own codes are in the bank
    alone = bank.without(1)
    assert len(alone.codes) == 2 * 14 * 12
    others = torch.cat([(typicality.patches.unfold(images[i][None], 8, 1)[0] - mean) @ basis for i in (0, 2)])
    torch.testing.assert_close(alone.codes.sort(dim=0).values, others.sort(dim=0).values)
    assert float(alone.distances(rows[None]).min()) > 0


def test_residual_levels_equal_a_float64_reference_per_cell():
    gen = torch.Generator().manual_seed(21)
    images = [torch.rand(1, 23, 18, generator=gen) for _ in range(2)]
    mean = torch.rand(64, generator=gen)
    code_basis = torch.linalg.qr(torch.randn(64, 6, generator=gen))[0]
    subspace = torch.linalg.qr(torch.randn(64, 3, generator=gen))[0]
    bank = typicality.build_bank(mean, code_basis, images, 29, 8, 0, subspace=subspace)
    rows = torch.cat([typicality.patches.unfold(t[None], 8, 1)[0] for t in images]).double() - mean.double()
    projector = torch.eye(64, dtype=torch.float64) - subspace.double() @ subspace.double().T  # dense Q
    levels = np.log(((rows @ projector).square().mean(1) + typicality.RESIDUAL_FLOOR).numpy())
    codes, centres = (rows @ code_basis.double()).numpy(), bank.codes.double().numpy()
    owner = np.sqrt(((codes[:, None] - centres[None]) ** 2).sum(-1)).argmin(1)
    expected = [levels[owner == j].mean() for j in range(len(centres))]
    np.testing.assert_allclose(bank.residual_levels.numpy(), expected, rtol=1e-4, atol=1e-4)
    # scoring a patch: |its level - the level its code's neighbours say it should have|
    centred = rows[:5].float()
    expected_level = bank.match(bank.codes_of(centred)).residual_levels
    flat = centred @ subspace @ subspace.T  # the grain removed: the subspace explains it all
    for patch, expected_sign in ((flat, -1), (centred + 3 * (flat - centred), 1)):
        level = torch.log((patch - patch @ subspace @ subspace.T).square().mean(1) + typicality.RESIDUAL_FLOOR)
        assert (expected_sign * (level - expected_level) > 1).all()  # far from normal, both ways
    assert not CodeBank(code_basis, bank.codes).has_residual and bank.without(0).has_residual


def test_match_blends_the_two_nearest_levels_as_a_float64_reference_does():
    gen = torch.Generator().manual_seed(5)
    centres, radii = torch.randn(37, 5, generator=gen), 0.5 + torch.rand(37, generator=gen)
    levels = torch.randn(37, generator=gen)
    bank = CodeBank(torch.eye(5), centres, radii, levels)
    points = torch.randn(301, 5, generator=gen)
    distance, level, _ = bank.match(points)
    exact = (points.double()[:, None] - centres.double()[None]).norm(dim=2) / radii.double()  # (n, M)
    d, j = exact.sort(dim=1)
    weights = (d[:, 2:3] - d[:, :2]) / d[:, :2].square()
    expected = (levels.double()[j[:, :2]] * weights).sum(1) / weights.sum(1)
    torch.testing.assert_close(distance.double(), d[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(level.double(), expected, rtol=1e-4, atol=1e-5)


def test_match_level_is_continuous_where_nearest_codes_swap():
    # three codes on a line, equal radii: walking from code 0 to code 1, the nearest code
    # swaps half-way; the blended level moves without a jump and is the mean there.
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    bank = CodeBank(torch.eye(2), centres, torch.ones(3), torch.tensor([0.0, 1.0, 7.0]))
    walk = torch.stack([torch.linspace(0, 1, 2001), torch.zeros(2001)], dim=1)
    level = bank.match(walk).residual_levels
    assert float(level.diff().abs().max()) < 5e-3
    assert abs(float(bank.match(torch.tensor([[0.5, 0.0]]))[1]) - 0.5) < 1e-6
    assert abs(float(level[0])) < 1e-6 and abs(float(level[-1]) - 1.0) < 1e-6
    # the second code fades out as the third catches up (2.5 is as far from 0 as from 5)
    near_tie = bank.match(torch.tensor([[2.5, 1e-3], [2.5, -1e-3]]))[1]
    assert abs(float(near_tie[0] - near_tie[1])) < 1e-4
    # one code: its level; no levels: None
    assert float(CodeBank(torch.eye(2), centres[:1], None, torch.tensor([3.0])).match(walk[:4])[1].max()) == 3.0
    assert CodeBank(torch.eye(2), centres).match(walk[:4])[1] is None


@pytest.mark.parametrize("columns", [2048, 256, 300, 7])
def test_smallest_finds_the_k_smallest_values_as_a_full_sort_does(columns):
    """The chunked search against a float64 sort, with ties among the smallest values."""
    gen = torch.Generator().manual_seed(columns)
    values = torch.randn(301, columns, generator=gen)
    values[::5, -1] = values[::5].min(dim=1).values  # a tie for the smallest, in another chunk
    for k in (1, 2, 3):
        got = typicality._smallest(values, min(k, columns))
        expected = values.double().sort(dim=1).values[:, : min(k, columns)]
        torch.testing.assert_close(values.gather(1, got).double().sort(dim=1).values, expected)
