"""The mix of sparse-part, code and residual-level maps is chosen on validation defects, and
fixed weights are obeyed."""

from types import SimpleNamespace

import pytest
import torch

from lista_cli.config import Config
from lista_cli.detection.scoring.detector import Detector, Scale
from lista_cli.detection.training.mixing import (
    FINEST_SHARES,
    RESIDUAL_WEIGHTS,
    SPARSE_SHARES,
    choose_weights,
    share_weights,
)
from lista_cli.detection.training.validation import sampled


def _detector(share=None, scales=2, residual=False, residual_weight=None):
    config = Config()
    config.score.smooth_sigma = 0.0
    config.score.sparse_share = share
    config.score.residual_weight = residual_weight
    # share_weights and combine read only the layout of the scales, not their models
    bank = SimpleNamespace(has_residual=residual)
    return Detector([Scale(f, model=None, bank=bank) for f in range(1, scales + 1)], config, channels=1)


def _validation(informative: str, count: int = 6, size: int = 24, kinds=("sparse", "code")):
    """Half clean, half with a square defect; one kind of map sees it, the others mislead."""
    gen = torch.Generator().manual_seed(3)
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    masks[count // 2 :, 8:14, 9:15] = True
    components = []
    for mask in masks:
        noise = torch.rand(2 * len(kinds), size, size, generator=gen) + 0.5 * (~mask).float()  # misleading maps
        signal = torch.rand(size, size, generator=gen) + 0.5 * mask.float()  # overlaps: any noise costs AUROC
        which = [i for i in range(2 * len(kinds)) if kinds[i % len(kinds)] == informative]  # two scales
        for i in which:
            noise[i] = signal
        components.append(noise)
    family = [None] * (count // 2) + ["square"] * (count - count // 2)
    return components, sampled(torch.zeros(count, 1, size, size), masks, family, seed=0)


@pytest.mark.parametrize("informative, expected", [("sparse", 1.0), ("code", 0.0)])
def test_the_informative_map_gets_the_whole_weight(informative, expected):
    components, validation = _validation(informative)
    weights, share, residual, auroc, _, _ = choose_weights(_detector(), validation, components)
    assert share == expected and residual == 0.0 and 0.7 < auroc < 1.0
    zero = (1, 3) if informative == "sparse" else (0, 2)
    assert all(weights[i] == 0 for i in zero) and all(w > 0 for i, w in enumerate(weights) if i not in zero)


def test_a_fixed_share_is_used_as_given():
    components, validation = _validation("code")
    mix = choose_weights(_detector(share=0.75), validation, components)
    assert mix.sparse_share == 0.75


def test_an_informative_residual_map_gets_weight_and_a_misleading_one_none():
    kinds = ("sparse", "code", "residual")
    components, validation = _validation("residual", kinds=kinds)
    mix = choose_weights(_detector(residual=True), validation, components)
    assert mix.residual_weight == max(RESIDUAL_WEIGHTS) and mix.sparse_share == 0.0
    assert [w > 0 for w in mix.weights] == [False, True, True] * 2  # code maps kept at 1 - share
    components, validation = _validation("code", kinds=kinds)
    assert choose_weights(_detector(residual=True), validation, components).residual_weight == 0.0
    fixed = choose_weights(_detector(residual=True, residual_weight=0.25), validation, components)
    assert fixed.residual_weight == 0.25


def test_share_weights_scale_each_kind_of_map():
    detector = _detector()
    assert share_weights(detector, [2.0, 4.0, 6.0, 8.0], 0.25) == [0.5, 3.0, 1.5, 6.0]
    detector.scales[1].bank = None  # a scale without a code bank has one map
    assert share_weights(detector, [2.0, 4.0, 6.0], 0.25) == [0.5, 3.0, 1.5]
    assert SPARSE_SHARES[0] == 0.5 and {0.0, 1.0} <= set(SPARSE_SHARES)
    detector = _detector(residual=True)  # per scale: sparse, code, residual
    assert share_weights(detector, [2.0, 4.0, 6.0, 8.0, 10.0, 12.0], 0.25, 0.5) == [0.5, 3.0, 2.25, 2.0, 7.5, 4.5]
    assert RESIDUAL_WEIGHTS[0] == 0.0  # off wins ties


def test_the_finest_scale_weighs_as_much_as_the_coarser_ones_together():
    one, three, four = _detector(scales=1), _detector(scales=3), _detector(scales=4)
    assert share_weights(one, [2.0, 4.0], 0.25) == [0.5, 3.0]
    # three scales: 3/2 for the finest, 3/4 for each coarser one (sum 3, as three scales of 1)
    assert share_weights(three, [2.0, 4.0, 2.0, 4.0, 2.0, 4.0], 0.25) == [0.75, 4.5, 0.375, 2.25, 0.375, 2.25]
    weights = share_weights(four, [1.0] * 8, 0.5)
    assert sum(weights[:2]) == pytest.approx(sum(weights[2:])) and len(set(weights[2:])) == 1


@pytest.mark.parametrize("seen_by, expected", [("finest", 2 / 3), ("coarse", 0.5)])
def test_the_finest_scale_gets_two_thirds_when_only_it_sees_the_defects(seen_by, expected):
    """Three scales, S and code maps: a defect that only the finest scale's maps show is
    found better the more they weigh; one that only the coarse scales show, the less."""
    gen = torch.Generator().manual_seed(8)
    count, size = 8, 24
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    masks[count // 2 :, 6:13, 10:16] = True
    seeing = [0, 1] if seen_by == "finest" else [2, 3, 4, 5]
    components = []
    for mask in masks:
        maps = torch.rand(6, size, size, generator=gen)
        for index in seeing:
            maps[index] += 0.4 * mask.float()
        components.append(maps)
    family = [None] * (count // 2) + ["square"] * (count // 2)
    validation = sampled(torch.zeros(count, 1, size, size), masks, family, seed=0)
    mix = choose_weights(_detector(scales=3), validation, components)
    assert mix.finest_share == pytest.approx(expected)
    weights = share_weights(_detector(scales=3), [1.0] * 6, mix.sparse_share, 0.0, mix.finest_share)
    levels = mix_levels(validation, components)
    assert mix.weights == pytest.approx([w * level for w, level in zip(weights, levels, strict=True)])
    assert FINEST_SHARES[0] == 0.5  # a half wins ties
    assert choose_weights(_detector(scales=1), validation, [c[:2] for c in components]).finest_share == 0.5


def mix_levels(validation, components):
    """1 / the 0.99 quantile of each component over the clean validation images' pixels (float64)."""
    clean = torch.cat([components[i].flatten(1) for i in validation.clean], dim=1).double()
    return [1.0 / float(q) for q in torch.quantile(clean, 0.99, dim=1)]


@pytest.mark.parametrize("smoothing", ["gaussian", "oriented"])
def test_the_mix_score_equals_scoring_the_combined_maps(smoothing):
    """choose_weights scores mixes from per-component samples; scoring the full combined
    maps (smoothed, resized to the reference size) must give the same number."""
    gen = torch.Generator().manual_seed(17)
    count, size = 6, 30
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    masks[3:, 5:17, 11:20] = True
    validation = sampled(torch.zeros(count, 1, size, size), masks, [None] * 3 + ["a", "b", "a"], seed=1)
    detector = _detector(residual=True)
    detector.config.score.smooth_sigma = 1.5
    detector.config.score.sparse_smoothing = smoothing
    components = [torch.rand(6, 17, 23, generator=gen) for _ in range(count)]  # not the reference size
    for index in range(3, count):
        components[index][:, 3:10, 8:14] += torch.rand(6, 1, 1, generator=gen)
    mix = choose_weights(detector, validation, components)
    assert mix.sparse_smoothing == smoothing
    direct, _ = validation.score(detector.combine(torch.stack(components), mix.weights, smoothing))
    assert mix.score == pytest.approx(direct, abs=1e-6)


def _trail_or_spot(shape: str, count: int = 8, size: int = 64):
    """S maps (both scales) of noise plus a faint defect, code maps of noise: a thin trail
    at 22.5 degrees across the map, or a small square spot."""
    gen = torch.Generator().manual_seed(5)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for index in range(count // 2, count):
        if shape == "trail":
            offset = 12 + 4 * index
            masks[index] = ((y - offset - 0.414 * x).abs() < 1.0) & (x > 8) & (x < 56)
        else:
            masks[index, 20 + index : 25 + index, 30:35] = True
    components = []
    for mask in masks:
        maps = torch.rand(4, size, size, generator=gen)
        maps[0] += 0.6 * mask
        maps[2] += 0.6 * mask
        components.append(maps)
    family = [None] * (count // 2) + [shape] * (count - count // 2)
    return components, sampled(torch.zeros(count, 1, size, size), masks, family, seed=0)


@pytest.mark.parametrize("shape, expected", [("trail", "oriented"), ("spot", "gaussian")])
def test_the_s_smoothing_follows_the_shape_of_the_validation_defects(shape, expected):
    detector = _detector()
    detector.config.score.smooth_sigma = 2.0
    components, validation = _trail_or_spot(shape)
    mix = choose_weights(detector, validation, components)
    assert mix.sparse_smoothing == expected
    detector.config.score.sparse_smoothing = "gaussian" if expected == "oriented" else "oriented"
    assert choose_weights(detector, validation, components).score < mix.score  # the other one, forced


def test_step_validation_reuses_the_bank_maps_and_scores_like_the_whole_detector():
    from lista_cli.detection.training.mixing import StepValidation, validation_score
    from lista_cli.detection.training.scales import init_scale
    from lista_cli.detection.training.validation import make_validation_set

    gen = torch.Generator().manual_seed(23)
    images = [torch.rand(1, 37, 41, generator=gen) * 0.5 + 0.25 for _ in range(5)]
    config = Config()
    config.score.bank_size = 64
    scale = init_scale(images[:3], config, 1)
    validation = make_validation_set(images[3:], config, seed=0)
    shape = tuple(validation.images.shape[-2:])
    step = StepValidation(scale, validation, shape, config, channels=1)
    whole = Detector([scale], config, channels=1)
    for _ in range(2):  # untrained, then with other thresholds: only the sparse map changes
        assert step.score() == pytest.approx(validation_score(whole, validation, shape), abs=1e-9)
        with torch.no_grad():
            scale.model.log_theta += 0.7
    assert step.fixed is not None and len(step.fixed) == 2  # code and residual-level samples kept
