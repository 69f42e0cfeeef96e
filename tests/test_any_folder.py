"""Training and detecting on folders as inspection lines make them: images of many sizes,
aspect ratios and modes in one folder (Hypothesis draws them), never an internal error."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.detection.training.train import _random_crops

from .conftest import FAST_TRAIN, texture

runner = CliRunner()
MODES = ("L", "RGB", "RGBA", "P", "I;16")
PATCH = 6  # the default patch side


def _save(path: Path, rng: np.random.Generator, height: int, width: int, mode: str) -> None:
    gray = texture(rng, height, width, colour=False)
    if mode == "I;16":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    elif mode == "L":
        Image.fromarray(gray).save(path)
    else:
        image = Image.fromarray(texture(rng, height, width, colour=True))
        image.convert(mode).save(path)


def test_random_crops_of_images_smaller_than_the_crop():
    """The crash of a folder of mixed sizes: one image shorter than train.crop."""
    rng = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 64, 80), torch.rand(1, 63, 63), torch.rand(1, 200, 40)]
    crops = _random_crops(images, 16, 64, rng)
    assert crops.shape[0] == 16 and crops.shape[-2] == crops.shape[-1] <= 40


def test_train_on_a_folder_of_mixed_sizes(tmp_path, rng):
    """Crops of a part, every one a different size, some smaller than the training crop,
    one too small for a patch: skipped with one warning naming it, the rest trained on."""
    data = tmp_path / "crops"
    data.mkdir()
    for i, (h, w) in enumerate([(100, 240), (63, 63), (240, 90), (150, 150), (70, 300), (5, 40)]):
        _save(data / f"{i}.png", rng, h, w, "L")
    model = tmp_path / "m.pt"
    result = runner.invoke(app, ["train", str(data), "--out", str(model), "--set", "train.steps=4"])
    assert result.exit_code == 0, result.output
    assert "5.png" in result.output and "smaller than one 6x6 patch" in result.output
    assert "nan" not in result.output and "internal error" not in result.output
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", str(model), str(data), "--out", str(out), "--quiet"])
    assert result.exit_code == 3 and "5.png" in result.output  # the tiny one fails in detect alike
    assert len(list(out.glob("*_map.npy"))) == 5


@st.composite
def folders(draw):
    """3-4 images: sides 6..90 px (aspect ratio up to 1:32), any of five modes."""
    count = draw(st.integers(3, 4))
    shapes = []
    for _ in range(count):
        short = draw(st.integers(PATCH, 40))
        aspect = draw(st.sampled_from([1.0, 1.5, 4.0, 32.0]))
        long = min(int(short * aspect), 300)
        shapes.append((short, long) if draw(st.booleans()) else (long, short))
    modes = draw(st.lists(st.sampled_from(MODES), min_size=count, max_size=count))
    return list(zip(shapes, modes, strict=True)), draw(st.integers(0, 2**16))


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(folder=folders())
def test_any_folder_trains_and_detects(folder, tmp_path_factory):
    """Train then detect on a drawn folder: exit 0 (or a documented one-line error), every
    map the height x width of its own image."""
    images, seed = folder
    rng = np.random.default_rng(seed)
    root = tmp_path_factory.mktemp("any")
    data = root / "good"
    data.mkdir()
    shapes = {}
    for i, ((h, w), mode) in enumerate(images):
        path = data / f"{i}_{mode.replace(';', '')}.png"
        _save(path, rng, h, w, mode)
        shapes[path.name] = (h, w)
    model = root / "m.pt"
    result = runner.invoke(app, ["train", str(data), "--out", str(model), *FAST_TRAIN, "--set", "data.scales=[1]"])
    assert "internal error" not in result.output and "Traceback" not in result.output
    assert "nan" not in result.output.lower()
    if result.exit_code != 0:  # too few usable images: one line, exit 1
        assert result.exit_code == 1 and "usable normal images" in result.output, result.output
        return
    out = root / "out"
    result = runner.invoke(app, ["detect", str(model), str(data), "--out", str(out), "--quiet"])
    assert result.exit_code in (0, 3), result.output  # 3: some image was skipped (too small for the model)
    assert "internal error" not in result.output
    with (out / "scores.csv").open() as handle:
        for row in csv.DictReader(handle):
            name = Path(row["image"]).name
            assert np.load(out / row["map"]).shape == shapes[name]


def test_an_image_smaller_than_a_patch_is_skipped_at_any_working_size(tmp_path, rng):
    """A 1x1 image with data.image_size 64 would be upscaled: train skips it as detect does."""
    data = tmp_path / "good"
    data.mkdir()
    for i in range(3):
        _save(data / f"g{i}.png", rng, 40, 50, "L")
    _save(data / "dot.png", rng, 1, 1, "L")
    result = runner.invoke(
        app, ["train", str(data), "--out", str(tmp_path / "m.pt"), *FAST_TRAIN[:-1], "--set", "data.image_size=64"]
    )
    assert FAST_TRAIN[-1] == "--quiet"  # left out: the warning is the point
    expected = "dot.png: image is 1x1 px, 64x64 at the working size, smaller than one 6x6 patch"
    assert result.exit_code == 0 and expected in result.output


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_reads_to_one_working_size(tmp_path, rng, mode):
    """A folder mixing one odd mode with gray images trains (channels decided over the folder)."""
    data = tmp_path / "good"
    data.mkdir()
    for i in range(3):
        _save(data / f"g{i}.png", rng, 40, 50, "L")
    _save(data / "odd.png", rng, 45, 41, mode)
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "m.pt"), *FAST_TRAIN])
    assert result.exit_code == 0, result.output
