"""The mix of sparse-part and code maps is chosen on validation defects, and a fixed share is obeyed."""

import pytest
import torch

from lista_cli.config import Config
from lista_cli.mixing import SPARSE_SHARES, choose_weights, share_weights
from lista_cli.pipeline import Detector, Scale
from lista_cli.validation import sampled


def _detector(share=None, scales=2):
    config = Config()
    config.score.smooth_sigma = 0.0
    config.score.sparse_share = share
    # share_weights and combine read only the layout of the scales, not their models
    return Detector([Scale(f, model=None, bank=object()) for f in range(1, scales + 1)], config, channels=1)


def _validation(informative: str, count: int = 6, size: int = 24):
    """Half clean, half with a square defect; one kind of map sees it, the other misleads."""
    gen = torch.Generator().manual_seed(3)
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    masks[count // 2 :, 8:14, 9:15] = True
    components = []
    for mask in masks:
        noise = torch.rand(4, size, size, generator=gen) + 0.5 * (~mask).float()  # misleading maps
        signal = torch.rand(size, size, generator=gen) + 0.5 * mask.float()  # overlaps: any noise costs AUROC
        which = (0, 2) if informative == "sparse" else (1, 3)  # per scale: [sparse, code]
        for i in which:
            noise[i] = signal
        components.append(noise)
    family = [None] * (count // 2) + ["square"] * (count - count // 2)
    return components, sampled(torch.zeros(count, 1, size, size), masks, family, seed=0)


@pytest.mark.parametrize("informative, expected", [("sparse", 1.0), ("code", 0.0)])
def test_the_informative_map_gets_the_whole_weight(informative, expected):
    components, validation = _validation(informative)
    weights, share, auroc = choose_weights(_detector(), validation, components)
    assert share == expected and 0.7 < auroc < 1.0
    zero = (1, 3) if informative == "sparse" else (0, 2)
    assert all(weights[i] == 0 for i in zero) and all(w > 0 for i, w in enumerate(weights) if i not in zero)


def test_a_fixed_share_is_used_as_given():
    components, validation = _validation("code")
    _, share, _ = choose_weights(_detector(share=0.75), validation, components)
    assert share == 0.75


def test_share_weights_scale_each_kind_of_map():
    detector = _detector()
    assert share_weights(detector, [2.0, 4.0, 6.0, 8.0], 0.25) == [0.5, 3.0, 1.5, 6.0]
    detector.scales[1].bank = None  # a scale without a code bank has one map
    assert share_weights(detector, [2.0, 4.0, 6.0], 0.25) == [0.5, 3.0, 1.5]
    assert SPARSE_SHARES[0] == 0.5 and {0.0, 1.0} <= set(SPARSE_SHARES)
