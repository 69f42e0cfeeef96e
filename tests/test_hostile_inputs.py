"""Hostile images and option values: each gets one line naming the file or option and the
right exit code, never a silent NaN, never an internal error; the rest of a batch goes on."""

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.io.imageio import ImageError, ImageWarning, read_image

from .conftest import csv_rows, exited_cleanly, texture

runner = CliRunner()


def _nan_tiff(path, height=40, width=44, bad=3):
    values = np.random.default_rng(5).random((height, width)).astype(np.float32)
    values.flat[:bad] = np.nan
    Image.fromarray(values, mode="F").save(path)
    return path


def _exif_jpeg(path, width=128, height=64, orientation=6):
    """Stored width x height; a viewer turns it as `orientation` says."""
    stored = np.zeros((height, width, 3), dtype=np.uint8)
    stored[:, : width // 2] = 200  # left half bright, to tell the turn from a flip
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    return path


# --- read_image: the one door every image comes through ------------------------------------


def test_non_finite_pixels_are_refused_naming_the_file(tmp_path):
    with pytest.raises(ImageError, match=r"nan\.tif: 3 of 1760 pixels are NaN or infinite"):
        read_image(_nan_tiff(tmp_path / "nan.tif"))
    values = np.full((9, 11), 0.5, dtype=np.float32)
    values[4, 4] = np.inf
    Image.fromarray(values, mode="F").save(tmp_path / "inf.tif")
    with pytest.raises(ImageError, match=r"inf\.tif: 1 of 99 pixels"):
        read_image(tmp_path / "inf.tif")
    Image.fromarray(np.full((9, 11), 0.25, dtype=np.float32), mode="F").save(tmp_path / "fine.tif")
    assert np.allclose(read_image(tmp_path / "fine.tif"), 0.25)


@pytest.mark.parametrize(("orientation", "corner"), [(6, (0, 0)), (8, (127, 0)), (3, None)])
def test_exif_orientation_gives_the_image_a_viewer_shows(tmp_path, orientation, corner):
    array = read_image(_exif_jpeg(tmp_path / "photo.jpg", orientation=orientation))
    if orientation == 3:  # turned half round: same shape, the bright half now on the right
        assert array.shape == (64, 128, 3) and array[:, -1].mean() > 0.7 and array[:, 0].mean() < 0.1
        return
    assert array.shape == (128, 64, 3)  # 64 wide, 128 high, as displayed
    bright_row = corner[0]
    assert array[bright_row].mean() > 0.7  # orientation 6 (90 deg clockwise): the left half is on top


def test_several_frames_warn_naming_the_file(tmp_path):
    frames = [Image.fromarray(np.full((20, 24), v, dtype=np.uint8)) for v in (10, 240)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(ImageWarning, match=r"anim\.gif: has 2 frames; only the first is used"):
        array = read_image(tmp_path / "anim.gif")
    assert array.shape[:2] == (20, 24) and array.mean() < 0.1  # the first frame


def _png_bytes(rng, mode, height=9, width=13):
    image = Image.fromarray(texture(rng, height, width, colour=mode == "RGB"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.tuples(st.sampled_from(["RGB", "L"]), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)))),
    )
)
def test_any_bytes_give_a_clean_image_or_one_image_error(tmp_path, data):
    """Random bytes, or a valid PNG with random bytes overwritten: a finite (H, W, 1|3) array
    in [0, 1], or an ImageError naming the file; nothing else."""
    if isinstance(data, tuple):
        mode, edits = data
        raw = bytearray(_png_bytes(np.random.default_rng(0), mode))
        for offset, value in edits:
            raw[offset % len(raw)] = value
        data = bytes(raw)
    path = tmp_path / "case.png"
    path.write_bytes(data)
    try:
        array = read_image(path)
    except ImageError as exc:
        assert str(exc).startswith(str(path))
        return
    assert array.ndim == 3 and array.shape[-1] in (1, 3) and array.dtype == np.float32
    assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=6))
def test_detect_on_damaged_image_bytes_scores_or_fails_cleanly(tiny_trained, tmp_path, edits):
    """A valid PNG with a few bytes overwritten, through lista detect: scored (exit 0, a
    finite score) or one failure line naming it (exit 3); never an internal error."""
    raw = bytearray(_png_bytes(np.random.default_rng(1), "RGB", 40, 44))
    for offset, value in edits:
        raw[offset % len(raw)] = value
    path = tmp_path / "case.png"
    path.write_bytes(bytes(raw))
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", str(tiny_trained[0]), str(path), "--out", str(out), "-q"])
    assert result.exit_code in (0, 3), result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    if result.exit_code == 3:
        assert f"failed: {path}: " in result.stderr
    else:
        (row,) = [r for r in csv_rows(out / "scores.csv") if r["image"] == str(path)]
        assert np.isfinite(float(row["score"]))


# --- through lista detect and lista train --------------------------------------------------


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    """Two good images and every hostile one: NaN float TIFF, 1x1, 3x90, a turned JPEG, a GIF."""
    folder = tmp_path_factory.mktemp("hostile") / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a_good.png", "z_good.png"):
        Image.fromarray(texture(rng, 40, 44)).save(folder / name)
    _nan_tiff(folder / "nan.tif")
    Image.fromarray(np.full((1, 1, 3), 128, dtype=np.uint8)).save(folder / "dot.png")
    Image.fromarray(texture(rng, 3, 90)).save(folder / "sliver.png")
    _exif_jpeg(folder / "turned.jpg", width=88, height=40)
    frames = [Image.fromarray(texture(rng, 40, 44, colour=False)) for _ in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    return folder


def test_detect_refuses_each_hostile_image_by_name_and_scores_the_rest(tiny_trained, hostile_folder, tmp_path):
    model = tiny_trained[0]
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["detect", str(model), str(hostile_folder), "--out", str(out), "-q", "--ext", "png,tif,jpg"]
    )
    stderr = exited_cleanly(result, 3)
    failures = {row["image"]: row["error"] for row in csv_rows(out / "failures.csv")}
    assert set(failures) == {str(hostile_folder / n) for n in ("nan.tif", "dot.png", "sliver.png")}
    assert "NaN or infinite" in failures[str(hostile_folder / "nan.tif")]
    assert "1x1 px, smaller than one" in failures[str(hostile_folder / "dot.png")]
    assert "90x3 px, smaller than one" in failures[str(hostile_folder / "sliver.png")]
    for name in ("nan.tif", "dot.png", "sliver.png"):
        assert sum(name in line for line in stderr.splitlines()) == 1  # one line each
    scores = {row["image"]: row for row in csv_rows(out / "scores.csv")}
    assert set(scores) == {str(hostile_folder / n) for n in ("a_good.png", "z_good.png", "turned.jpg")}
    assert all(np.isfinite(float(row["score"])) for row in scores.values())
    turned_map = np.load(out / "turned_map.npy")
    assert turned_map.shape == (88, 40)  # displayed 40 wide, 88 high: the map too
    assert Image.open(out / "turned_heatmap.png").size == (40, 88)
    assert Image.open(out / "turned_mask.png").size == (40, 88)


def test_detect_warns_about_a_multi_frame_file_and_scores_its_first_frame(tiny_trained, hostile_folder, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", str(tiny_trained[0]), str(hostile_folder / "anim.gif"), "--out", str(out)])
    stderr = exited_cleanly(result, 0)
    assert f"warning: {hostile_folder / 'anim.gif'}: has 3 frames; only the first is used" in stderr
    assert len(csv_rows(out / "scores.csv")) == 1


def test_train_skips_a_normal_image_with_nan_pixels_naming_it(tmp_path, rng):
    from .conftest import FAST_TRAIN

    data = tmp_path / "normal"
    data.mkdir()
    for i in range(5):
        Image.fromarray(texture(rng, 37, 45)).save(data / f"{i}.png")
    _nan_tiff(data / "broken.tif", 37, 45)
    out = tmp_path / "m.pt"
    result = runner.invoke(app, ["train", str(data), "--out", str(out), *FAST_TRAIN[:-1], "--json"])
    stderr = exited_cleanly(result, 0)
    assert f"{data / 'broken.tif'}: 3 of 1665 pixels are NaN or infinite" in stderr
    summary = __import__("json").loads(result.stdout)
    assert np.isfinite(summary["threshold"]) and np.isfinite(summary["pixel_threshold"])


# --- option and config values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.lr=nan", "train.lr must be a finite number"),
        ("train.lr=inf", "train.lr must be a finite number"),
        ("score.threshold_margin=.nan", "score.threshold_margin must be a finite number"),
        ("cutpaste.area=[0.02, .inf]", "cutpaste.area must be a finite number"),
        ("data.image_size=100000", "data.image_size must be <= 4096"),
    ],
)
def test_config_numbers_that_make_no_sense_are_one_line(override, named):
    stderr = exited_cleanly(runner.invoke(app, ["config", "--set", override]), 1)
    assert named in stderr and len(stderr.strip().splitlines()) == 1


def test_train_refuses_a_nan_learning_rate_before_reading_a_folder(tmp_path):
    result = runner.invoke(
        app, ["train", str(tmp_path / "none"), "--out", str(tmp_path / "m.pt"), "--set", "train.lr=nan"]
    )
    assert "train.lr must be a finite number" in exited_cleanly(result, 1)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--noise-sigma", "-1"], "--noise-sigma must be a noise std >= 0"),
        (["--noise-sigma", "nan"], "--noise-sigma must be a noise std >= 0"),
        (["--alpha", "0.5", "--alpha-rule", "gcv"], "--alpha-rule gcv has no effect with --alpha 0.5"),
        (["--alpha", "0.5", "--noise-sigma", "0.01"], "--noise-sigma has no effect with --alpha 0.5"),
        (["--alpha-rule", "gcv", "--noise-sigma", "0.01"], "--noise-sigma has no effect with --alpha-rule gcv"),
        (["--alpha", "nan"], "--alpha must be a positive finite number"),
        (["--alpha", "inf"], "--alpha must be a positive finite number"),
    ],
)
def test_deblur_options_that_would_be_ignored_or_clamped_are_errors(tmp_path, rng, options, named):
    Image.fromarray(texture(rng, 16, 18)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["deblur", str(tmp_path / "a.png"), "--psf", "gaussian:1", "--out", str(out), *options])
    assert named in exited_cleanly(result, 1)
    assert not (out / "a.png").exists()


@pytest.mark.parametrize(("value", "code"), [("nan", 2), ("inf", 1)])  # nan: the option's own range check
def test_blur_refuses_a_noise_level_that_is_no_number(tmp_path, rng, value, code):
    Image.fromarray(texture(rng, 16, 18)).save(tmp_path / "a.png")
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["blur", str(tmp_path / "a.png"), "--psf", "gaussian:1", "--out", str(out), "--noise-sigma", value]
    )
    assert "--noise-sigma" in exited_cleanly(result, code)
    assert not (out / "a.png").exists()


def test_deblur_never_writes_over_its_inputs(tmp_path, rng):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(texture(rng, 16, 18)).save(images / "a.png")
    before = (images / "a.png").read_bytes()
    folder = runner.invoke(app, ["deblur", str(images), "--psf", "gaussian:1", "--out", str(images)])
    assert "is, or holds, the input folder" in exited_cleanly(folder, 1)
    named = runner.invoke(app, ["deblur", str(images / "a.png"), "--psf", "gaussian:1", "--out", str(images)])
    assert "would replace the image itself" in exited_cleanly(named, 3)
    assert (images / "a.png").read_bytes() == before


@pytest.mark.parametrize(("value", "code"), [("nan", 2), ("inf", 1)])
def test_detect_threshold_must_be_a_finite_score(tiny_trained, tmp_path, value, code):
    model, data = tiny_trained
    result = runner.invoke(
        app, ["detect", str(model), str(data / "test" / "good"), "--out", str(tmp_path / "o"), "--threshold", value]
    )
    assert "--threshold" in exited_cleanly(result, code)
    assert not (tmp_path / "o" / "scores.csv").exists()


def test_threshold_max_fpr_must_be_a_share(tiny_trained, tmp_path):
    model, data = tiny_trained
    result = runner.invoke(
        app, ["threshold", str(model), str(data), "--max-fpr", "nan", "--out", str(tmp_path / "new.pt")]
    )
    assert "--max-fpr nan" in exited_cleanly(result, 1)
