"""Validation defects, the per-family validation score, the pixel threshold and the working size."""

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_curve, roc_auc_score

from lista_cli.config import Config
from lista_cli.detection.training.calibration import calibrate, pixel_threshold
from lista_cli.detection.training.defects import FAMILIES, drawn_defect
from lista_cli.detection.training.validation import make_validation_set, sampled
from lista_cli.detection.training.working_size import working_size


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_is_seeded_masked_and_changes_the_image(family):
    gen = torch.Generator().manual_seed(11)
    image = 0.4 + 0.2 * torch.rand(3, 53, 71, generator=gen)
    first = drawn_defect(image, torch.Generator().manual_seed(5), family)
    again = drawn_defect(image, torch.Generator().manual_seed(5), family)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    augmented, mask = first
    assert augmented.shape == image.shape and mask.shape == (53, 71) and mask.dtype == torch.bool
    assert 0 < mask.sum() < 0.5 * mask.numel()
    assert (augmented - image).abs().amax(dim=0)[mask].mean() > 0.01  # the masked pixels really changed
    assert augmented.min() >= 0 and augmented.max() <= 1


def test_validation_set_has_every_family_and_clean_images():
    gen = torch.Generator().manual_seed(2)
    images = [torch.rand(1, 40, 47, generator=gen) for _ in range(4)]
    validation = make_validation_set(images, Config(), seed=0)
    names = {f for f in validation.family if f is not None}
    assert names == {*FAMILIES, "cutpaste"}
    assert len(validation.clean) == 4 and not validation.masks[validation.clean].any()


def _random_set(gen, count=6, size=(19, 23)):
    masks = torch.zeros(count, *size, dtype=torch.bool)
    family = [None, None, "a", "a", "b", "b"]
    masks[2, 3:9, 4:8] = True
    masks[3, 10:12, 2:20] = True
    masks[4, 5:6, 5:15] = True
    masks[5, 1:4, 1:4] = True
    return sampled(torch.zeros(count, 1, *size), masks, family, seed=int(torch.randint(100, (), generator=gen)))


def test_score_is_the_mean_over_families_of_sklearn_auroc():
    gen = torch.Generator().manual_seed(7)
    validation = _random_set(gen)
    maps = torch.rand(6, 19, 23, generator=gen) + 0.7 * validation.masks.float()
    maps[0, 0, :4] = maps[4, 5, 5]  # ties between a normal and a defect pixel
    score, per_family = validation.score(maps)
    flat, labels = maps.reshape(-1).numpy(), validation.masks.reshape(-1).numpy()
    for name, rows in (("a", [2, 3]), ("b", [4, 5])):
        chosen = np.zeros(6, dtype=bool)
        chosen[rows] = True
        positive = (validation.masks.numpy() & chosen[:, None, None]).reshape(-1)
        keep = positive | ~labels  # that family's pixels against every normal pixel
        assert per_family[name] == pytest.approx(roc_auc_score(positive[keep], flat[keep]), abs=1e-9)
    assert score == pytest.approx(np.mean(list(per_family.values())))


def test_pixel_threshold_maximises_pixel_f1():
    gen = torch.Generator().manual_seed(9)
    validation = _random_set(gen)
    maps = torch.rand(6, 19, 23, generator=gen) + 0.6 * validation.masks.float()
    chosen = pixel_threshold(maps, validation)
    # every pixel is in the sample here (the set is small), so the F1 is sklearn's on all of them
    precision, recall, thresholds = precision_recall_curve(
        validation.masks.reshape(-1).numpy(), maps.reshape(-1).double().numpy()
    )
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    assert chosen == pytest.approx(thresholds[np.argmax(f1[:-1])], abs=1e-6)


def test_calibrate_takes_a_quantile_times_the_margin():
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(37, generator=gen)
    result = calibrate(scores, 0.9, 1.1)
    assert result == pytest.approx(np.quantile(scores.double().numpy(), 0.9) * 1.1)


@pytest.mark.parametrize(
    "shapes, expected",
    [
        ([(128, 128)] * 3, 128),  # never upsampled
        ([(160, 160), (100, 600), (900, 170)], 160),  # median shorter side
        ([(625, 250), (630, 250)], 250),
        ([(1024, 1024)], 256),
        ([(460, 1130)] * 2, 256),
        ([(256, 4096)] * 2, 256),  # a line-scan strip keeps its 1 Mpx
        ([(256, 8192)] * 2, 181),  # ... a longer one is bounded by its area
    ],
)
def test_working_size_rule(shapes, expected):
    size = working_size(shapes, "auto")
    shorter = np.median([min(s) for s in shapes])
    assert round(shorter * size.factor) == expected and size.side == expected
    assert working_size(shapes, 200).image_size == 200 and working_size(shapes, None).image_size is None


def test_training_defects_mix_cutpaste_and_drawn_families_when_asked():
    from lista_cli.detection.training.train import training_defect

    config = Config()
    crop = 0.3 + 0.4 * torch.rand(3, 33, 29, generator=torch.Generator().manual_seed(1))
    config.train.defects = "cutpaste"
    cut = training_defect(crop, torch.Generator().manual_seed(2), config)
    # CutPaste only changes a pasted region: most pixels stay exactly as they were
    assert cut.shape == crop.shape and 0 < (cut != crop).any(0).float().mean() < 0.5
    config.train.defects = "all"
    outputs = [training_defect(crop, torch.Generator().manual_seed(seed), config) for seed in range(12)]
    assert all(o.shape == crop.shape and not torch.equal(o, crop) for o in outputs)
    again = training_defect(crop, torch.Generator().manual_seed(5), config)
    assert torch.equal(again, outputs[5])  # seeded
    # some draws are drawn families: they change pixels CutPaste never would (soft or thin)
    changed = [float((o != crop).any(0).float().mean()) for o in outputs]
    assert len({round(c, 3) for c in changed}) > 3


def test_calibration_round_trips_and_reads_older_dicts():
    from lista_cli.detection.scoring.detector import Calibration

    calibration = Calibration([1.0, 2.0], 3.5, 1.5, [1.2, 1.1], [1.3], [0.5, 0.7])
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    # format 1-2 checkpoints: one threshold, extra keys of their own, no map weights
    old = Calibration.from_dict({"threshold": 2.0, "quantile": 0.99, "margin": 1.1})
    assert old.threshold == 2.0 and old.pixel_threshold is None and old.map_weights is None
    assert Calibration.from_dict(None).threshold == float("inf")
