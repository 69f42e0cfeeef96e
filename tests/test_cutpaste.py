import math

import torch

from lista_cli.config import CutPasteConfig
from lista_cli.detection.training.cutpaste import cutpaste


def _image(seed, size=(3, 61, 47)):
    return torch.rand(*size, generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_output():
    image = _image(0)
    a = cutpaste(image, torch.Generator().manual_seed(5), CutPasteConfig())
    b = cutpaste(image, torch.Generator().manual_seed(5), CutPasteConfig())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = cutpaste(image, torch.Generator().manual_seed(6), CutPasteConfig())
    assert not torch.equal(a[1], c[1])


def test_rectangle_area_and_aspect_bounds():
    cfg = CutPasteConfig()
    image = _image(1, (3, 100, 90))
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        augmented, mask = cutpaste(image, gen, cfg, scar=False)
        rows, cols = mask.any(1).sum().item(), mask.any(0).sum().item()
        assert rows * cols == mask.sum().item()  # a filled rectangle
        share = mask.float().mean().item()
        assert cfg.area[0] * 0.85 <= share <= cfg.area[1] * 1.15
        assert cfg.aspect[0] * 0.8 <= rows / cols <= cfg.aspect[1] * 1.25


def test_pixels_change_only_inside_mask():
    image = _image(3)
    gen = torch.Generator().manual_seed(4)
    for scar in (False, True):
        for _ in range(20):
            augmented, mask = cutpaste(image, gen, CutPasteConfig(), scar=scar)
            assert augmented.shape == image.shape and mask.shape == image.shape[1:]
            assert mask.any()
            assert torch.equal(augmented[:, ~mask], image[:, ~mask])
            assert (augmented[:, mask] != image[:, mask]).any()


def test_scar_is_thin_and_scales_with_size():
    cfg = CutPasteConfig()
    gen = torch.Generator().manual_seed(8)
    big = [cutpaste(_image(5, (1, 256, 256)), gen, cfg, scar=True)[1].sum().item() for _ in range(30)]
    small = [cutpaste(_image(5, (1, 128, 128)), gen, cfg, scar=True)[1].sum().item() for _ in range(30)]
    max_area = cfg.scar_width[1] * cfg.scar_length[1] + 2 * (cfg.scar_width[1] + cfg.scar_length[1]) + 4
    assert max(big) <= max_area
    assert min(big) >= math.floor(cfg.scar_width[0] * cfg.scar_length[0] * 0.5)
    assert sum(small) < sum(big) / 2


def test_drawn_defects_are_seeded_and_masked():
    from lista_cli.detection.training.defects import scratch, stain

    image = _image(9, (1, 70, 57))
    for draw in (scratch, stain):
        a = draw(image, torch.Generator().manual_seed(1))
        b = draw(image, torch.Generator().manual_seed(1))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        augmented, mask = a
        assert mask.shape == (70, 57) and mask.any() and mask.float().mean() < 0.2
        assert (augmented[:, mask] != image[:, mask]).any()
    augmented, mask = scratch(image, torch.Generator().manual_seed(2))
    assert torch.equal(augmented[:, ~mask], image[:, ~mask])  # a scratch changes only its own pixels
