import pytest
import torch

from lista_cli.detection.model.patches import fold, grid_shape, padded_size, unfold


@pytest.mark.parametrize("size", [(37, 31), (8, 8), (9, 50), (64, 33), (127, 128)])
@pytest.mark.parametrize("patch,stride", [(8, 4), (5, 3), (6, 6), (7, 1)])
def test_fold_inverts_unfold_on_odd_sizes(size, patch, stride):
    if min(size) < patch:
        pytest.skip("smaller than a patch")
    gen = torch.Generator().manual_seed(hash((size, patch, stride)) % 2**31)
    images = torch.rand(2, 3, *size, generator=gen)
    rows = unfold(images, patch, stride)
    assert rows.shape[-1] == 3 * patch * patch
    assert rows.shape[1] == grid_shape(*size, patch, stride)[0] * grid_shape(*size, patch, stride)[1]
    torch.testing.assert_close(fold(rows, size, patch, stride), images, rtol=0, atol=1e-6)


def test_every_pixel_is_covered():
    size, patch, stride = (37, 31), 8, 5
    ones = torch.ones(1, patch * patch, 1)
    rows = unfold(torch.zeros(1, 1, *size), patch, stride)
    marked = fold(torch.ones_like(rows), size, patch, stride)
    assert marked.shape == (1, 1, *size)
    assert bool((marked == 1).all())
    assert ones.numel() == patch * patch


def test_padded_size_and_too_small():
    assert padded_size(37, 8, 4) == 40
    assert padded_size(40, 8, 4) == 40
    with pytest.raises(ValueError, match="smaller than the patch size"):
        padded_size(5, 8, 4)


def test_wrong_dimensions_named():
    with pytest.raises(ValueError, match="Expected a 4-D tensor"):
        unfold(torch.zeros(3, 10, 10), 4, 2)
