import numpy as np
import pytest
from PIL import Image

from lista_cli.io.imageio import ImageError, read_image, to_channels


def test_modes_and_formats_become_floats_in_unit_range(tmp_path, rng):
    rgb = (rng.random((13, 17, 3)) * 255).astype(np.uint8)
    cases = {
        "gray.png": Image.fromarray(rgb[..., 0]),
        "rgb.jpg": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((13, 17), 7, np.uint8)])),
        "pal.png": Image.fromarray(rgb).convert("P"),
        "rgb.bmp": Image.fromarray(rgb),
        "rgb.tif": Image.fromarray(rgb),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "bw.png": Image.fromarray(rgb[..., 0] > 128),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        array = read_image(tmp_path / name)
        assert array.dtype == np.float32 and array.shape[:2] == (13, 17), name
        assert array.shape[2] in (1, 3) and 0 <= array.min() and array.max() <= 1, name
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), rgb / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.bmp"), rgb / 255.0, atol=1e-6)


def test_sixteen_bit_keeps_precision(tmp_path):
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    array = read_image(tmp_path / "deep.png")
    np.testing.assert_allclose(array[..., 0], values / 65535.0, atol=1e-6)


def test_channel_conversion():
    rgb = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    gray = to_channels(rgb, 1)
    assert gray.shape == (4, 5, 1)
    np.testing.assert_allclose(gray[..., 0], rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-6)
    assert to_channels(gray, 3).shape == (4, 5, 3)


def test_bad_files_name_file_and_problem(tmp_path, rng):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    expected = {
        "empty.png": "empty file",
        "text.png": "not an image file",
        "cut.png": "truncated or corrupt",
        "cut.jpg": "truncated or corrupt",
        "missing.png": "cannot read file",
    }
    for name, problem in expected.items():
        with pytest.raises(ImageError) as info:
            read_image(tmp_path / name)
        assert name in str(info.value) and problem in str(info.value)
