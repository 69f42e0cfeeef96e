"""Validation defects, the per-family validation score, the pixel threshold and the working size."""

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_curve, roc_auc_score

from lista_cli.config import Config
from lista_cli.detection.training import calibration
from lista_cli.detection.training.calibration import best_f1_level, calibrate, pixel_sample
from lista_cli.detection.training.defects import FAMILIES, drawn_defect
from lista_cli.detection.training.validation import make_validation_set, mask_examples, sampled
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


def test_the_mask_level_maximises_pixel_f1():
    gen = torch.Generator().manual_seed(9)
    masks = torch.rand(6, 19, 23, generator=gen) < 0.1
    maps = (torch.rand(6, 19, 23, generator=gen) + 0.6 * masks.float()).numpy()
    maps[0, :2] = maps[1, 0, 0]  # ties: a level keeps every pixel equal to it
    samples = [pixel_sample(m, k.numpy(), seed=n) for n, (m, k) in enumerate(zip(maps, masks, strict=True))]
    values, weights, is_defect = (np.concatenate(c) for c in zip(*samples, strict=True))
    assert len(values) == maps.size and (weights == 1).all()  # every pixel of a small map is in the sample
    chosen = best_f1_level(values, weights, is_defect)
    precision, recall, thresholds = precision_recall_curve(masks.reshape(-1).numpy(), maps.reshape(-1))
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    assert chosen == pytest.approx(thresholds[np.argmax(f1[:-1])], abs=1e-6)


def test_a_large_map_is_sampled_with_weights_for_the_pixels_each_stands_for(monkeypatch):
    monkeypatch.setattr(calibration, "MASK_SAMPLE", 500)
    gen = np.random.default_rng(3)
    anomaly_map = gen.random((90, 110)).astype(np.float32)
    mask = np.zeros((90, 110), dtype=bool)
    mask[10:40, 20:50] = True  # 900 defect px, 9000 normal
    values, weights, is_defect = pixel_sample(anomaly_map, mask, seed=4)
    assert is_defect.sum() == 500 and (~is_defect).sum() == 500
    assert weights[is_defect].sum() == pytest.approx(900) and weights[~is_defect].sum() == pytest.approx(9000)
    assert set(values[is_defect]) <= set(anomaly_map[mask].astype(np.float64))
    again = pixel_sample(anomaly_map, mask, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip((values, weights, is_defect), again, strict=True))


def test_mask_examples_are_input_size_crops_with_seeded_defects(tmp_path):
    from PIL import Image

    gen = np.random.default_rng(5)
    paths = []
    for number in range(2):
        paths.append(tmp_path / f"{number}.png")
        Image.fromarray((gen.random((400, 1500)) * 255).astype(np.uint8)).save(paths[-1])

    def half(height, width):  # a model at half the input's resolution
        return height // 2, width // 2

    examples = list(mask_examples(paths, 1, half, Config(), seed=0))
    assert len(examples) == 8 and not examples[0][1].any() and all(m.any() for _, m in examples[1:4])
    for array, mask in examples:
        assert array.shape[2] == 1 and mask.shape == array.shape[:2]
        assert array.shape[0] == 400 and 320 * 320 * 4 - 400 < array.size <= 320 * 320 * 4  # cut to 320^2 model px
        assert np.array_equal(np.round(array * 255) / 255, array.astype(np.float64))  # 8-bit values
    again = list(mask_examples(paths, 1, half, Config(), seed=0))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(examples, again, strict=True))


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


def test_calibration_round_trips_and_fills_missing_keys():
    from lista_cli.detection.scoring.detector import Calibration

    calibration = Calibration([1.0, 2.0], 3.5, 1.5, [1.2, 1.1], [1.3], [0.5, 0.7])
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    # unknown keys are dropped, missing ones take the untrained defaults
    old = Calibration.from_dict({"threshold": 2.0, "quantile": 0.99, "margin": 1.1})
    assert old.threshold == 2.0 and old.pixel_threshold is None and old.map_weights is None
    assert Calibration.from_dict(None).threshold == float("inf")
