import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lista_cli.detection.evaluation.metrics import roc_auc


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

from lista_cli.detection.evaluation.metrics import aupro, f1_at, f1_max, label_regions  # noqa: E402


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
    from lista_cli.detection.scoring.postprocess import image_score

    maps = np.random.default_rng(shape[1]).random(shape, dtype=np.float32)
    flat = np.sort(maps.astype(np.float64).reshape(shape[0], -1), axis=1)[:, ::-1]
    count = max(1, round(share * flat.shape[1]))
    for m, row in zip(maps, flat, strict=True):
        assert image_score(m, "topk", share) == pytest.approx(row[:count].mean(), rel=1e-6)
        assert image_score(m, "max") == row[0]


@pytest.mark.parametrize("sigma", [0.7, 2.0, 3.3])
@pytest.mark.parametrize("border, mode", [("reflect", "mirror"), ("replicate", "nearest")])
def test_gaussian_smooth_equals_scipy(sigma, border, mode):
    """Against scipy.ndimage.gaussian_filter (torch's 'reflect' is scipy's 'mirror'), on
    odd sizes, with the same radius ceil(3 sigma)."""
    import math

    import torch
    from scipy import ndimage

    from lista_cli.detection.scoring.pixel_maps import gaussian_smooth

    maps = np.random.default_rng(int(10 * sigma)).random((2, 23, 31))
    got = gaussian_smooth(torch.from_numpy(maps), sigma, border).numpy()
    radius = max(1, math.ceil(3 * sigma))
    expected = np.stack([ndimage.gaussian_filter(m, sigma, mode=mode, radius=radius) for m in maps])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    tiny = np.random.default_rng(1).random((1, 5, 4))  # radius beyond the map: replicated borders
    got = gaussian_smooth(torch.from_numpy(tiny), 3.3, border).numpy()
    np.testing.assert_allclose(got[0], ndimage.gaussian_filter(tiny[0], 3.3, mode="nearest", radius=10), atol=1e-12)


def _line_contrast_reference(maps: np.ndarray, along: float, across: float, count: int = 8) -> np.ndarray:
    """pixel_maps.line_contrast in float64 numpy with explicit loops: 2 x 2 block means (partial
    blocks average what they have), each rotated Gaussian applied by direct summation over a
    reflected border, the largest |response - the perpendicular direction's response|, then
    bilinear x2 (half-pixel centres, clamped)."""
    import math

    height, width = maps.shape
    half_h, half_w = -(-height // 2), -(-width // 2)
    half = np.zeros((half_h, half_w))
    for i in range(half_h):
        for j in range(half_w):
            half[i, j] = maps[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean()
    radius = max(1, math.ceil(3 * along))
    padded = np.pad(half, radius, mode="reflect")
    responses = []
    for k in range(count):
        angle = math.pi * k / count
        weights = np.zeros((2 * radius + 1, 2 * radius + 1))
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                u = dx * math.cos(angle) + dy * math.sin(angle)
                v = -dx * math.sin(angle) + dy * math.cos(angle)
                weights[dy + radius, dx + radius] = math.exp(-(u * u) / (2 * along**2) - v * v / (2 * across**2))
        weights /= weights.sum()
        response = np.zeros((half_h, half_w))
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                response += weights[dy, dx] * padded[dy : dy + half_h, dx : dx + half_w]
        responses.append(response)
    best = np.zeros((half_h, half_w))
    for k in range(count):  # direction k and the one 90 degrees on
        best = np.maximum(best, np.abs(responses[k] - responses[(k + count // 2) % count]))

    def source(index: int, length: int) -> tuple[int, int, float]:
        position = max((index + 0.5) / 2 - 0.5, 0.0)
        low = min(int(position), length - 1)
        return low, min(low + 1, length - 1), position - low

    out = np.zeros((height, width))
    for i in range(height):
        top, bottom, fy = source(i, half_h)
        for j in range(width):
            left, right, fx = source(j, half_w)
            upper = (1 - fx) * best[top, left] + fx * best[top, right]
            lower = (1 - fx) * best[bottom, left] + fx * best[bottom, right]
            out[i, j] = (1 - fy) * upper + fy * lower
    return out


@pytest.mark.parametrize("shape", [(37, 41), (64, 33)])
def test_oriented_smooth_equals_scipy_gaussian_plus_a_direct_float64_line_contrast(shape):
    import torch
    from scipy import ndimage

    from lista_cli.detection.scoring import pixel_maps

    maps = np.random.default_rng(shape[0]).random((2, *shape))
    got = pixel_maps.oriented_smooth(torch.from_numpy(maps).float(), 2.0).double().numpy()
    along, across = pixel_maps.LINE_SIGMA_ALONG / 2, pixel_maps.LINE_SIGMA_ACROSS / 2
    for m, g in zip(maps, got, strict=True):
        gaussian = ndimage.gaussian_filter(m, 2.0, mode="mirror", radius=6)
        np.testing.assert_allclose(g, gaussian + _line_contrast_reference(m, along, across), atol=2e-6)


def _trail_and_spot(rng: np.random.Generator, count: int = 6, size: int = 96):
    """Noise maps with a faint 2 px trail at 30 degrees and a round spot of the same height."""
    y, x = np.mgrid[0:size, 0:size]
    trail = (np.abs(y - 30 - 0.577 * x) < 1.0) & (x > 10) & (x < 85)
    spot = np.exp(-((y - 75) ** 2 + (x - 30) ** 2) / (2 * 3.0**2))
    return y, x, trail, rng.random((count, size, size)) + 0.4 * trail + 0.4 * spot


def test_a_faint_trail_stands_out_more_after_oriented_smoothing_than_after_the_gaussian():
    """The reason for it: along a thin trail the elongated Gaussian averages the trail with
    itself, the isotropic one with the noise around it."""
    import torch

    from lista_cli.detection.scoring import pixel_maps

    y, x, trail, maps = _trail_and_spot(np.random.default_rng(4))
    maps = torch.from_numpy(maps).float()

    def separation(smoothed: torch.Tensor) -> float:
        values = smoothed.numpy()
        far = (np.abs(y - 30 - 0.577 * x) >= 12) & (np.hypot(y - 75, x - 30) >= 12)
        return (values[:, trail].mean() - values[:, far].mean()) / values[:, far].std()

    assert separation(pixel_maps.oriented_smooth(maps, 2.0)) > 1.25 * separation(pixel_maps.gaussian_smooth(maps, 2.0))


def test_a_thin_trail_gains_and_a_round_spot_keeps_its_peak():
    """A direction and its perpendicular see a round spot alike where it peaks, so its
    maximum stays the Gaussian's; a 2 px trail's rises by its line contrast."""
    import torch

    from lista_cli.detection.scoring import pixel_maps

    y, x = np.mgrid[0:80, 0:80]
    trail = torch.from_numpy((np.abs(y - 40) < 1.0) * 1.0)[None].float()
    assert float(pixel_maps.oriented_smooth(trail, 2.0).max()) > 2 * float(pixel_maps.gaussian_smooth(trail, 2.0).max())
    for radius in (2.0, 4.0, 8.0):
        spot = torch.from_numpy(np.exp(-((y - 40) ** 2 + (x - 41) ** 2) / (2 * radius**2)))[None].float()
        gaussian, oriented = pixel_maps.gaussian_smooth(spot, 2.0), pixel_maps.oriented_smooth(spot, 2.0)
        assert float(oriented.max()) < 1.05 * float(gaussian.max())
        assert int(oriented.argmax()) == int(gaussian.argmax())


def test_smooth_mix_smooths_each_kind_of_map_at_its_own_sigma():
    """Against scipy: code maps at code_sigma, the others at sigma, summed with
    their weights; the oriented smoothing adds each sparse map's line contrast."""
    import torch
    from scipy import ndimage

    from lista_cli.detection.scoring import pixel_maps

    kinds = ["sparse", "code", "residual", "sparse", "code", "residual"]
    weights = [0.7, 1.3, 0.4, 2.0, 0.1, 0.9]
    maps = np.random.default_rng(11).random((1, len(kinds), 41, 37))
    got = pixel_maps.smooth_mix(torch.from_numpy(maps), weights, kinds, 1.5, "gaussian", 3.5).numpy()[0]
    expected = sum(
        w
        * ndimage.gaussian_filter(
            maps[0, i],
            3.5 if k == "code" else 1.5,
            mode="mirror",
            radius=math.ceil(3 * (3.5 if k == "code" else 1.5)),
        )
        for i, (k, w) in enumerate(zip(kinds, weights, strict=True))
    )
    np.testing.assert_allclose(got, expected, atol=1e-10)
    oriented = pixel_maps.smooth_mix(torch.from_numpy(maps), weights, kinds, 1.5, "oriented", 3.5).numpy()[0]
    along, across = pixel_maps.LINE_SIGMA_ALONG / 2, pixel_maps.LINE_SIGMA_ACROSS / 2
    lines = sum(weights[i] * _line_contrast_reference(maps[0, i], along, across) for i in (0, 3))
    np.testing.assert_allclose(oriented, expected + lines, atol=1e-6)
