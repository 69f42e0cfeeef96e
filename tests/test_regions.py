"""Regions of a mask: labels against scipy.ndimage, statistics against a per-region loop."""

import numpy as np
import pytest
from scipy import ndimage

from lista_cli.detection.scoring.regions import find_regions, label_regions


@pytest.mark.parametrize(
    "shape, density", [((1, 1), 1.0), ((7, 13), 0.5), ((61, 37), 0.45), ((128, 3), 0.6), ((40, 40), 0.0)]
)
def test_labels_equal_scipy_four_connected_labelling(shape, density):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    for _ in range(5):
        mask = rng.random(shape) < density
        labels, count = label_regions(mask)
        expected, expected_count = ndimage.label(mask)  # 4-connected, numbered in raster order
        assert count == expected_count
        np.testing.assert_array_equal(labels, expected)


def test_a_spiral_is_one_region():
    """Runs that join only far below (a U and a spiral) must end in one component."""
    mask = np.zeros((9, 9), bool)
    mask[0, :] = mask[:, 8] = mask[8, :] = mask[2:, 0] = mask[2, :7] = mask[2:7, 6] = mask[6, 2:7] = True
    labels, count = label_regions(mask)
    assert count == ndimage.label(mask)[1] == 1 and (labels[mask] == 1).all()


def test_region_statistics_equal_a_loop_over_regions():
    rng = np.random.default_rng(5)
    score_map = rng.random((45, 31)).astype(np.float32)
    mask = rng.random((45, 31)) < 0.5
    kept, regions = find_regions(score_map, mask, min_area=4)
    labels, count = ndimage.label(mask)
    expected = []
    for k in range(1, count + 1):
        ys, xs = np.nonzero(labels == k)
        if len(ys) < 4:
            continue
        values = score_map[ys, xs].astype(np.float64)
        expected.append(
            (
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
                len(ys),
                xs.mean(),
                ys.mean(),
                values.max(),
                values.mean(),
            )
        )
    expected.sort(key=lambda r: -r[7])
    assert len(regions) == len(expected) > 2
    for got, want in zip(regions, expected, strict=True):
        assert got[:5] == want[:5]
        np.testing.assert_allclose(got[5:], want[5:], rtol=1e-9)
    small = [k for k in range(1, count + 1) if (labels == k).sum() < 4]
    assert small and not kept[np.isin(labels, small)].any()  # regions below min_area leave the mask
    assert kept.sum() == sum(r.area for r in regions)
    assert find_regions(score_map, np.zeros_like(mask))[1] == []


def test_heatmap_outlines_each_region_in_cyan():
    from lista_cli.io.writer import OUTLINE, heatmap_overlay

    mask = np.zeros((12, 15), bool)
    mask[2:7, 3:9] = True  # a 5 x 6 block: its border is outlined, its inside is not
    mask[9:12, 12:15] = True  # touches the image corner
    image = np.full((12, 15, 1), 0.5, np.float32)
    out = heatmap_overlay(image, np.zeros((12, 15), np.float32), 1.0, mask, rows=5)
    cyan = (out == OUTLINE).all(-1)
    expected = mask & ~ndimage.binary_erosion(mask, border_value=0)
    np.testing.assert_array_equal(cyan, expected)
    plain = heatmap_overlay(image, np.zeros((12, 15), np.float32), 1.0)
    assert not (plain == OUTLINE).all(-1).any()
