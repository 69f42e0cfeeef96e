"""The one tile rule (tiling.py): tiles aligned to every scale's grid, one noise scale per
image scale measured on the whole image, so a tiled map equals the untiled one up to rounding."""

from __future__ import annotations

import numpy as np
import torch

from lista_cli.detection.model.patches import unfold
from lista_cli.detection.scoring.checkpoint import load_checkpoint
from lista_cli.detection.scoring.inference import noise_scale
from lista_cli.detection.scoring.resampling import downsample
from lista_cli.detection.scoring.tiling import TileRule

TILED_TOLERANCE = 1e-5  # of the image threshold: README, "Big images"


def test_tile_boxes_cover_every_pixel_once_with_aligned_offsets():
    rule = TileRule.of(patch=6, stride=3, factors=[1, 2], tile_size=100, reach=12)
    assert rule.tile % 6 == 0 and rule.margin % 6 == 0 and rule.margin >= 2 * 6 * 2 + 12
    for height, width in [(97, 83), (rule.tile, rule.tile + 1), (250, 131)]:
        covered = np.zeros((height, width), dtype=int)
        for (y0, y1, x0, x1), (top, left, core_h, core_w) in rule.boxes(height, width):
            assert y0 % 6 == 0 and x0 % 6 == 0 and y0 <= top and x0 <= left
            assert top + core_h <= y1 and left + core_w <= x1
            covered[top : top + core_h, left : left + core_w] += 1
        assert (covered == 1).all()
    assert not rule.needs_tiles(rule.tile, rule.tile) and rule.needs_tiles(rule.tile + 1, 5)


def test_the_whole_image_noise_scale_is_the_models_own(tiny_trained):
    """inference.noise_scale equals the model's noise_scale over every patch row of the image
    (the same evenly spaced sample), at odd sizes on both sides of 2^15 sampled entries
    (every row holding a sample, then one row per sample) and in between."""
    detector = load_checkpoint(tiny_trained[0])
    p, stride = detector.config.patch.size, detector.config.patch.stride
    gen = torch.Generator().manual_seed(4)
    for height, width in [(37, 45), (131, 173), (160, 161), (400, 301), (700, 650)]:
        image = torch.rand(1, 3, height, width, generator=gen)
        for scale in detector.scales:
            small = downsample(image, scale.factor)
            expected = scale.model.noise_scale(unfold(small, p, stride) - scale.model.mean)
            torch.testing.assert_close(noise_scale(scale.model, small, p, stride), expected, rtol=1e-6, atol=0)


def test_a_tiled_map_equals_the_untiled_one_on_an_image_large_enough_to_tile(tiny_trained):
    """1100 x 1043 at the default 1024 px tiles against one pass: within TILED_TOLERANCE of
    the threshold (matrix products round differently for a tile's patch count)."""
    detector = load_checkpoint(tiny_trained[0])
    image = torch.rand(3, 1100, 1043, generator=torch.Generator().manual_seed(5))
    assert detector.config.data.tile_size == 1024 and detector.tile_rule.needs_tiles(1100, 1043)
    tiled = detector.working_map(image)
    detector.config.data.tile_size = 2048
    assert not detector.tile_rule.needs_tiles(1100, 1043)
    whole = detector.working_map(image)
    gap = float(np.abs(tiled - whole).max()) / detector.threshold
    print(f"tiled vs untiled: {gap:.2e} of the threshold")
    assert gap <= TILED_TOLERANCE
