"""Every kind of bad input gets one clear line naming the file, and the batch goes on."""

import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.config import Config
from lista_cli.io.imageio import read_image

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An RGB model, a gray model and a native-resolution RGB model, trained once."""
    from .conftest import make_mvtec, train_tiny

    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    data = make_mvtec(root / "data", rng)
    gray = root / "gray"
    (gray / "train" / "good").mkdir(parents=True)
    for path in (data / "train" / "good").iterdir():
        Image.open(path).convert("L").save(gray / "train" / "good" / path.name)
    out = {}
    for name, folder, extra in [
        ("rgb", data, []),
        ("gray", gray, []),
        ("native", data, ["--set", "data.image_size=null"]),
    ]:
        out[name] = train_tiny(folder, root / f"{name}.pt", *extra)
    return out


def _bad_files(folder, rng):
    folder.mkdir(parents=True, exist_ok=True)
    good = (rng.random((40, 44, 3)) * 255).astype(np.uint8)
    Image.fromarray(good).save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    png = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    Image.fromarray(good).save(folder / "whole.jpg")
    jpg = (folder / "whole.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(jpg[: len(jpg) // 3])
    (folder / "notes.png").write_text("this is text, not a picture\n")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    return {
        "empty.png": "empty file",
        "truncated.png": "truncated or corrupt",
        "cut.jpg": "truncated or corrupt",
        "notes.png": "not an image file",
        "dangling.png": "cannot read file",
    }


def test_every_bad_file_is_reported_and_the_rest_processed(models, tmp_path, rng):
    inputs = tmp_path / "in"
    expected = _bad_files(inputs, rng)
    empty_folder = tmp_path / "nothing"
    empty_folder.mkdir()
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "detect",
            str(models["rgb"]),
            str(inputs),
            str(empty_folder),
            str(tmp_path / "missing.png"),
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(lines) == len(expected) + 2  # + the empty folder + the missing file
    for name, problem in expected.items():
        assert any(name in line and problem in line for line in lines), (name, lines)
    assert any("nothing: folder contains no images" in line for line in lines)
    assert any("missing.png: no such file or folder" in line for line in lines)
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert sorted(r["image"].rsplit("/", 1)[-1] for r in rows) == ["good.png", "whole.jpg"]
    failures = list(csv.DictReader(open(out / "failures.csv")))
    assert len(failures) == len(expected) + 2


def test_unreadable_file(models, tmp_path, rng):
    if os.geteuid() == 0:
        pytest.skip("root can read a chmod-000 file; the dangling symlink case covers unreadable files")
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((rng.random((20, 20)) * 255).astype(np.uint8)).save(folder / "locked.png")
    (folder / "locked.png").chmod(0)
    result = runner.invoke(app, ["detect", str(models["rgb"]), str(folder), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 1 and "locked.png: cannot read file" in result.stderr


def test_nothing_to_process_is_exit_1(models, tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["detect", str(models["rgb"]), str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "no images to process" in result.stderr and "folder contains no images" in result.stderr


def test_image_smaller_than_a_patch(models, tmp_path, rng):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((rng.random((5, 30, 3)) * 255).astype(np.uint8)).save(folder / "sliver.png")
    Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(folder / "fine.png")
    result = runner.invoke(app, ["detect", str(models["native"]), str(folder), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 3
    p = Config().patch.size
    assert f"sliver.png: image is 30x5 px, smaller than one {p}x{p} patch" in result.stderr
    assert (tmp_path / "o" / "fine_map.npy").exists()


def test_unusual_modes_are_converted(models, tmp_path, rng):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = (rng.random((33, 29, 3)) * 255).astype(np.uint8)
    Image.fromarray((rng.random((33, 29)) * 65535).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(np.dstack([rgb, np.full((33, 29), 128, np.uint8)])).save(folder / "alpha.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "print.jpg")
    Image.fromarray(rgb).save(folder / "tiff.tif")
    Image.fromarray(rgb).save(folder / "bitmap.bmp")
    for model, warning in [(models["rgb"], "converting gray images"), (models["gray"], "converting colour images")]:
        out = tmp_path / model.stem
        result = runner.invoke(app, ["detect", str(model), str(folder), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert result.stderr.count(warning) == 1  # warned once, not per image
        for stem in ("deep16", "alpha", "palette", "print", "tiff", "bitmap"):
            assert np.load(out / f"{stem}_map.npy").shape == (33, 29)


def test_unwritable_output_is_an_error_before_work(models, tmp_path, rng):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    result = runner.invoke(app, ["detect", str(models["rgb"]), str(folder), "--out", str(blocker / "sub")])
    assert result.exit_code == 1 and "output folder is not writable" in result.stderr


def test_bad_config_files(tmp_path, mvtec):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 3\n   lr: 0.1\n")
    result = runner.invoke(app, ["train", str(mvtec), "--out", str(tmp_path / "m.pt"), "--config", str(bad)])
    assert result.exit_code == 1 and "bad.yaml: invalid YAML at line 3" in result.stderr
    typed = tmp_path / "typed.yaml"
    typed.write_text("train:\n  steps: many\n")
    result = runner.invoke(app, ["train", str(mvtec), "--out", str(tmp_path / "m.pt"), "--config", str(typed)])
    assert result.exit_code == 1 and "train.steps must be an integer, got 'many'" in result.stderr
    assert not (tmp_path / "m.pt").exists()


def test_device_choice(models, tmp_path, mvtec):
    if not torch.cuda.is_available():
        result = runner.invoke(
            app, ["detect", str(models["rgb"]), str(mvtec / "test"), "--out", str(tmp_path / "o"), "--device", "cuda"]
        )
        assert result.exit_code == 1 and "no CUDA GPU is available" in result.stderr
    result = runner.invoke(
        app, ["detect", str(models["rgb"]), str(mvtec / "test"), "--out", str(tmp_path / "o"), "--device", "auto", "-q"]
    )
    assert result.exit_code == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_gpu_matches_cpu(models, tmp_path, mvtec):
    for device in ("cpu", "cuda"):
        result = runner.invoke(
            app,
            [
                "detect",
                str(models["rgb"]),
                str(mvtec / "test"),
                "--out",
                str(tmp_path / device),
                "--device",
                device,
                "-q",
            ],
        )
        assert result.exit_code == 0
    a, b = (np.load(tmp_path / d / "spot" / "s0_map.npy") for d in ("cpu", "cuda"))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_sixteen_bit_reads_full_range(tmp_path):
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(tmp_path / "d.png")
    assert read_image(tmp_path / "d.png").max() == pytest.approx(1.0)
