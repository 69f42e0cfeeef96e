"""Edge damping: measured on normal maps with hot borders, applied per distance to the edge."""

import numpy as np
import torch

from lista_cli.detection.scoring.postprocess import Finish
from lista_cli.detection.training.edges import QUANTILE, edge_profile


def damp_edges(maps: torch.Tensor, rows: list[float], columns: list[float]) -> torch.Tensor:
    finish = Finish(rows, columns)
    return torch.stack([torch.from_numpy(finish.damp_edges(m.numpy())) for m in maps])


def test_damp_edges_matches_a_pixel_loop():
    gen = torch.Generator().manual_seed(3)
    maps = torch.rand(2, 11, 17, generator=gen)
    rows, columns = [3.0, 2.0, 1.5], [1.0, 4.0, 1.0]
    got = damp_edges(maps, rows, columns).numpy()
    expected = maps.numpy().copy()
    for y in range(11):
        for x in range(17):
            dy, dx = min(y, 10 - y), min(x, 16 - x)
            divisor = max(rows[dy] if dy < 3 else 1.0, columns[dx] if dx < 3 else 1.0)
            expected[:, y, x] /= divisor
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_hot_border_is_damped_to_the_interior_level_and_a_cold_one_is_left():
    gen = torch.Generator().manual_seed(5)
    maps = [torch.rand(40, 53, generator=gen) for _ in range(30)]
    for m in maps:
        m[:, :3] *= 3.0  # the left edge of every normal image is three times as hot
    rows, columns = edge_profile(maps, 8)
    assert all(r < 1.02 for r in rows)  # top and bottom are like the interior: (almost) no damping
    assert columns[0] > 2.5 and columns[2] > 2.5 and all(c < 1.02 for c in columns[3:])
    assert columns == sorted(columns, reverse=True)
    damped = torch.stack([damp_edges(m[None], rows, columns)[0] for m in maps])
    interior = np.quantile(damped[:, 8:-8, 8:-8].numpy(), QUANTILE)
    left = np.quantile(damped[:, :, :3].numpy(), QUANTILE)
    assert abs(left / interior - 1) < 0.05
