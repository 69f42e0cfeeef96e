import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lista_cli.detection.metrics import roc_auc


@pytest.mark.parametrize("size", [2, 17, 1001])
def test_roc_auc_matches_sklearn_with_ties(rng, size):
    for _ in range(5):
        labels = rng.random(size) < 0.3
        labels[0], labels[-1] = True, False
        scores = np.round(rng.random(size), 1)  # many ties
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_roc_auc_one_class_is_nan():
    assert np.isnan(roc_auc(np.zeros(4, bool), np.arange(4.0)))


from sklearn.metrics import precision_recall_curve  # noqa: E402

from lista_cli.detection.metrics import aupro, f1_at, f1_max, label_regions  # noqa: E402


@pytest.mark.parametrize("size", [5, 64, 999])
def test_f1_max_matches_sklearn_precision_recall_curve(rng, size):
    for _ in range(5):
        labels = rng.random(size) < 0.4
        labels[0] = True
        scores = np.round(rng.random(size) + 0.5 * labels, 1)  # informative, with ties
        precision, recall, thresholds = precision_recall_curve(labels, scores)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
        best = int(np.argmax(f1[:-1]))
        value, threshold = f1_max(labels, scores)
        assert value == pytest.approx(f1[best], abs=1e-9)
        assert threshold == pytest.approx(thresholds[best])
        assert f1_at(labels, scores, threshold) == pytest.approx(value, abs=1e-12)


def test_label_regions_four_connected():
    mask = np.zeros((6, 7), bool)
    mask[0:2, 0:2] = True
    mask[4:6, 3:6] = True
    mask[2, 2] = True  # touches the first block only diagonally: its own region
    labels, count = label_regions(mask)
    assert count == 3
    assert len({labels[0, 0], labels[1, 1]}) == 1 and labels[2, 2] not in (0, labels[0, 0])


def test_aupro_hand_computed():
    # Regions A = two pixels (0.9, 0.5), B = one pixel (0.7); normals 0.8, 0.1, 0.2, 0.3, 0.4.
    # PRO steps: 0.25 at FPR 0, then FPR 0.2 (0.8), then 0.75, 1.0; area to 0.3 = 0.05 + 0.1.
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 1]], bool)
    scores = np.array([[0.9, 0.5, 0.8, 0.1], [0.2, 0.3, 0.4, 0.7]])
    assert aupro([mask], [scores]) == pytest.approx(0.15 / 0.3)
    # The same pixels split over two images: regions are counted over the whole set.
    assert aupro([mask[:1], mask[1:]], [scores[:1], scores[1:]]) == pytest.approx(0.5)


def test_aupro_region_weighting_and_perfect():
    # A big region half found and a small region fully found weigh the same.
    mask = np.zeros((10, 10), bool)
    mask[0:4, 0:4] = True  # 16 px
    mask[8, 8] = True  # 1 px
    scores = np.zeros((10, 10))
    scores[0:2, 0:4] = 1.0  # half of the big region
    scores[8, 8] = 1.0
    # Threshold 1: FPR 0, PRO = (0.5 + 1) / 2 = 0.75; threshold 0: FPR 1, PRO 1. The curve is
    # linear in between, so PRO(0.3) = 0.825 and the normalised area is (0.75 + 0.825) / 2.
    assert aupro([mask], [scores]) == pytest.approx((0.75 + 0.825) / 2, abs=1e-9)
    assert aupro([mask], [mask.astype(float)]) == pytest.approx(1.0)
    assert np.isnan(aupro([np.zeros((3, 3), bool)], [np.zeros((3, 3))]))


@pytest.mark.parametrize("shape, share", [((1, 1, 1), 0.01), ((3, 17, 29), 0.01), ((2, 40, 7), 0.3), ((1, 5, 5), 1.0)])
def test_topk_image_score_is_the_mean_of_the_largest_pixels(shape, share):
    import torch

    from lista_cli.detection.scoring import image_scores

    maps = torch.rand(shape, generator=torch.Generator().manual_seed(shape[1]))
    got = image_scores(maps, "topk", share).numpy()
    flat = np.sort(maps.double().numpy().reshape(shape[0], -1), axis=1)[:, ::-1]
    count = max(1, round(share * flat.shape[1]))
    np.testing.assert_allclose(got, flat[:, :count].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(image_scores(maps, "max").numpy(), flat[:, 0], rtol=1e-7)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 3.3])
@pytest.mark.parametrize("border, mode", [("reflect", "mirror"), ("replicate", "nearest")])
def test_gaussian_smooth_equals_scipy(sigma, border, mode):
    """Against scipy.ndimage.gaussian_filter (torch's 'reflect' is scipy's 'mirror'), on
    odd sizes, with the same radius ceil(3 sigma)."""
    import math

    import torch
    from scipy import ndimage

    from lista_cli.detection.scoring import gaussian_smooth

    maps = np.random.default_rng(int(10 * sigma)).random((2, 23, 31))
    got = gaussian_smooth(torch.from_numpy(maps), sigma, border).numpy()
    radius = max(1, math.ceil(3 * sigma))
    expected = np.stack([ndimage.gaussian_filter(m, sigma, mode=mode, radius=radius) for m in maps])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    tiny = np.random.default_rng(1).random((1, 5, 4))  # radius beyond the map: replicated borders
    got = gaussian_smooth(torch.from_numpy(tiny), 3.3, border).numpy()
    np.testing.assert_allclose(got[0], ndimage.gaussian_filter(tiny[0], 3.3, mode="nearest", radius=10), atol=1e-12)
