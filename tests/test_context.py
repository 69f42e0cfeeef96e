"""The context map: codes of every scale stacked per scale-1 patch, against a bank."""

import numpy as np
import torch

from lista_cli.detection.context import coarse_index, stack_codes


def test_coarse_index_is_the_nearest_coarse_patch_centre():
    p, s = 8, 4
    for factor, coarse_count in ((2, 9), (4, 4)):
        got = coarse_index(19, coarse_count, factor, p, s).numpy()
        fine = np.arange(19) * s + p / 2
        coarse = (np.arange(coarse_count) * s + p / 2) * factor
        expected = np.abs(fine[:, None] - coarse[None]).argmin(1)
        # ties may pick either neighbour: compare the distances to the chosen centres
        np.testing.assert_allclose(np.abs(fine - coarse[got]), np.abs(fine - coarse[expected]))


def test_coarse_index_shifts_with_a_tile():
    """A tile starting k coarse steps in (k * f fine steps) sees every index shifted by k:
    ties must not round one way here and the other way there (round half to even would)."""
    for p, s, factor in ((6, 3, 2), (8, 4, 2), (6, 3, 3), (5, 2, 4)):
        whole = coarse_index(60, 10**6, factor, p, s)
        for k in (1, 2, 3):
            tile = coarse_index(60 - k * factor, 10**6, factor, p, s)
            # past the first few (clamped at the tile's border, inside its margin)
            np.testing.assert_array_equal((tile + k)[4:].numpy(), whole[k * factor :][4:].numpy())


def test_stack_codes_concatenates_each_patch_with_its_coarse_neighbours():
    gen = torch.Generator().manual_seed(4)
    fine, coarse = torch.rand(5, 7, 3, generator=gen), torch.rand(3, 4, 2, generator=gen)
    stacked = stack_codes([fine, coarse], [1, 2], [2.0, 0.5], 8, 4)
    assert stacked.shape == (35, 5)
    y, x = coarse_index(5, 3, 2, 8, 4), coarse_index(7, 4, 2, 8, 4)
    for i in range(5):
        for j in range(7):
            row = stacked[i * 7 + j]
            torch.testing.assert_close(row[:3], fine[i, j] / 2.0)
            torch.testing.assert_close(row[3:], coarse[y[i], x[j]] / 0.5)
