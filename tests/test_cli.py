"""The real CLI through typer.testing.CliRunner: exit codes, files, messages."""

import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.config import Config

from .conftest import RNG_SEED, make_mvtec, texture

runner = CliRunner()
FAST = ["--set", "train.steps=4", "--set", "train.val_every=2", "--set", "train.batch=4", "--quiet"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """One model for the module, trained on the same data the `mvtec` fixture makes (same
    seed); tests copy it before changing it."""
    root = tmp_path_factory.mktemp("cli_model")
    data = make_mvtec(root / "data", np.random.default_rng(RNG_SEED))
    path = root / "model.pt"
    result = runner.invoke(app, ["train", str(data), "--out", str(path), *FAST])
    assert result.exit_code == 0, result.output
    return path


def test_train_writes_a_loadable_self_describing_checkpoint(model):
    payload = torch.load(model, weights_only=True)
    assert payload["format"] == "lista-checkpoint" and payload["format_version"] == 9
    assert set(payload["config"]) == {"data", "patch", "model", "score"}  # no training schedule
    extra = payload["state"]["_extra_state"]
    calibration = extra["calibration"]
    assert calibration["threshold"] > 0
    assert 0 < calibration["pixel_threshold"] <= calibration["threshold"]
    assert calibration["sparse_smoothing"] in ("gaussian", "oriented")  # chosen on validation
    assert payload["config"]["data"]["image_size"] == "auto" and extra["working_scale"] == 1.0  # 37x45: own size
    # every training image is calibrated on (6 left out of the bank one at a time, 2 held out)
    assert len(calibration["image_scores"]) == 8
    score = payload["config"]["score"]  # threshold = the configured quantile of those scores x the margin
    expected = np.quantile(calibration["image_scores"], score["threshold_quantile"]) * score["threshold_margin"]
    assert calibration["threshold"] == pytest.approx(expected, rel=1e-9)
    assert extra["channels"] == 3 and extra["factors"] == [1, 2, 4]
    assert not list(model.parent.glob(".model.pt.*"))  # no temporary left behind


def test_detect_writes_maps_masks_and_scores(model, mvtec, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", str(model), str(mvtec / "test"), "--out", str(out), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 4
    assert set(rows[0]) >= {"image", "score", "normalized_score", "anomalous"}
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4 and {line["image"] for line in lines} == {row["image"] for row in rows}
    for stem in ("good/g0", "good/g1", "spot/s0", "spot/s1"):
        raw = np.load(out / f"{stem}_map.npy")
        assert raw.dtype == np.float32 and raw.shape == (37, 45)
        assert Image.open(out / f"{stem}_heatmap.png").size == (45, 37)
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert set(np.unique(mask)) <= {0, 255}
        row = next(r for r in rows if r["image"].endswith(f"{stem}.png"))
        assert (row["anomalous"] == "True") == bool(mask.any())  # anomalous exactly when the mask is not empty
        if mask.any():  # the mask is the map at the pixel threshold, which sits at or below the image threshold
            calibration = torch.load(model, weights_only=True)["state"]["_extra_state"]["calibration"]
            assert calibration["pixel_threshold"] <= calibration["threshold"]
            np.testing.assert_array_equal(mask > 0, raw >= calibration["pixel_threshold"])
    spot = [float(r["score"]) for r in rows if "/spot/" in r["image"]]
    good = [float(r["score"]) for r in rows if "/good/" in r["image"]]
    assert min(spot) > max(good)


def test_detect_files_and_globs(model, mvtec, tmp_path):
    out = tmp_path / "o"
    one = mvtec / "test" / "spot" / "s0.png"
    pattern = str(mvtec / "test" / "*" / "g*.png")
    result = runner.invoke(app, ["detect", str(model), str(one), pattern, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / "s0_map.npy").exists()
    assert (out / "good" / "g0_map.npy").exists() and (out / "good" / "g1_map.npy").exists()


def test_output_name_clash_is_an_error(model, mvtec, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "s0.png").write_bytes((mvtec / "test" / "good" / "g0.png").read_bytes())
    result = runner.invoke(
        app,
        ["detect", str(model), str(mvtec / "test/spot/s0.png"), str(other / "s0.png"), "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 1
    assert "would both write outputs named 's0'" in result.stderr
    assert not (tmp_path / "o").exists()


def test_one_bad_image_does_not_stop_the_batch(model, mvtec, tmp_path):
    (mvtec / "test" / "good" / "broken.png").write_text("garbage")
    out = tmp_path / "o"
    result = runner.invoke(app, ["detect", str(model), str(mvtec / "test"), "--out", str(out), "--quiet"])
    assert result.exit_code == 3
    assert "broken.png: not an image file" in result.stderr
    assert "Traceback" not in result.output
    assert len(list(csv.DictReader(open(out / "scores.csv")))) == 4
    assert "broken.png" in (out / "failures.csv").read_text()


def test_bad_model_files_are_refused(tmp_path, mvtec):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps(Evil()))
    for path, message in [
        (evil, "refused"),
        (pickled, "not a lista checkpoint"),
        (junk, "not a lista checkpoint"),
        (plain, "not a lista checkpoint"),
        (tmp_path / "none.pt", "model file not found"),
    ]:
        result = runner.invoke(app, ["detect", str(path), str(mvtec / "test"), "--out", str(tmp_path / "o")])
        assert result.exit_code == 1, (path, result.output)
        assert message in result.stderr and str(path) in result.stderr
        assert "Traceback" not in result.output
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_incompatible_checkpoints(model, tmp_path, mvtec):
    data = model.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    payload = torch.load(model, weights_only=True)
    payload["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(payload, future)
    for path, message in [(cut, "not a lista checkpoint"), (future, "retrain the model")]:
        result = runner.invoke(app, ["detect", str(path), str(mvtec / "test"), "--out", str(tmp_path / "o")])
        assert result.exit_code == 1 and message in result.stderr, result.output


def test_config_errors_exit_1_with_one_line(mvtec, tmp_path):
    result = runner.invoke(app, ["train", str(mvtec), "--out", str(tmp_path / "m.pt"), "--set", "train.setps=3"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unknown config key 'train.setps'; did you mean 'train.steps'?"
    assert not (tmp_path / "m.pt").exists()


def test_config_command_prints_merged_yaml():
    result = runner.invoke(app, ["config", "--set", "model.layers=3"])
    assert result.exit_code == 0
    assert "layers: 3" in result.stdout


def test_missing_inputs_and_usage_errors(model, tmp_path):
    result = runner.invoke(app, ["detect", str(model), str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no such file or folder" in result.stderr
    assert runner.invoke(app, ["detect", str(model)]).exit_code == 2


def test_eval_reports_per_kind_json(model, mvtec):
    result = runner.invoke(app, ["eval", str(model), str(mvtec), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 4 and set(report["kinds"]) == {"spot"}
    assert report["image_auroc"] == 1.0 and report["pixel_auroc"] > 0.9


def test_training_is_repeatable(mvtec, tmp_path):
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for path in paths:
        assert runner.invoke(app, ["train", str(mvtec), "--out", str(path), *FAST]).exit_code == 0
    a, b = (torch.load(p, weights_only=True)["state"] for p in paths)
    assert a.keys() == b.keys() and any(k.startswith("scales.0.bank.") for k in a)
    assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_training_that_only_hurts_keeps_the_untrained_model(mvtec, tmp_path):
    """A wild learning rate wrecks the layers; validation must keep step 0 (ISTA itself)."""
    from lista_cli.config import load_config
    from lista_cli.detection.training.train import train

    overrides = ["train.steps=6", "train.val_every=2", "train.batch=4", "score.bank_size=0"]
    wrecked = train(mvtec, load_config(None, [*overrides, "train.lr=50"]), tmp_path / "wrecked.pt")
    train(mvtec, load_config(None, [*overrides, "model.learn=false"]), tmp_path / "ista.pt")
    assert [s["factor"] for s in wrecked.scales] == [1, 2, 4]  # the default scales: each keeps its own best step
    for scale in wrecked.scales:
        assert scale["best_step"] == 0 and scale["val_auroc_best"] == scale["val_auroc_start"]
    a, b = (torch.load(tmp_path / name, weights_only=True)["state"] for name in ("wrecked.pt", "ista.pt"))
    layers = [k for k in a if ".model." in k]
    assert len(layers) > 4 and all(torch.equal(a[k], b[k]) for k in layers)


@pytest.mark.parametrize("background", ["image", "both"])
def test_image_background_trains_detects_and_tiles(mvtec, tmp_path, background):
    from lista_cli.detection.scoring.checkpoint import load_checkpoint

    model = tmp_path / f"{background}.pt"
    result = runner.invoke(
        app, ["train", str(mvtec), "--out", str(model), *FAST, "--set", f"model.background={background}"]
    )
    assert result.exit_code == 0, result.output
    detector = load_checkpoint(model)
    assert detector.model.background == background and "log_tau" in dict(detector.model.named_parameters())
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", str(model), str(mvtec / "test"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader(open(out / "scores.csv")))) == 4
    # tiles hold their own low rank, so a tiled map is close to, not equal to, the whole map
    detector.config.data.image_size = None
    image = torch.rand(3, 70, 90)
    whole = detector.working_map(image)
    detector.config.data.tile_size = 64
    tiled = detector.working_map(image)
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()


def test_a_scale_too_small_for_a_patch_is_skipped_with_a_warning(tmp_path, rng):
    from lista_cli.detection.scoring.checkpoint import load_checkpoint

    data = tmp_path / "tiny"
    data.mkdir()
    p = Config().patch.size
    for i in range(5):  # half size: less than a patch
        Image.fromarray(texture(rng, 2 * p - 2, 2 * p - 1)).save(data / f"{i}.png")
    model = tmp_path / "tiny.pt"
    result = runner.invoke(
        app, ["train", str(data), "--out", str(model), "--set", "data.image_size=null", "--set", "train.steps=2"]
    )
    assert result.exit_code == 0, result.output
    assert "scale 1/2 skipped" in result.stderr and "Traceback" not in result.output
    detector = load_checkpoint(model)
    assert [s.factor for s in detector.scales] == [1] and detector.config.data.scales == [1]
    result = runner.invoke(app, ["detect", str(model), str(data), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output


def test_auto_size_scales_every_image_by_one_factor(tmp_path, rng):
    """Training images of different sizes: one factor brings the median shorter side to
    256 px; it is printed by train and used by detect."""
    data = tmp_path / "sizes"
    data.mkdir()
    for i, (h, w) in enumerate([(300, 280), (290, 310), (320, 300), (300, 300), (280, 290)]):
        Image.fromarray(texture(rng, h, w, colour=False)).save(data / f"{i}.png")
    model = tmp_path / "m.pt"
    result = runner.invoke(app, ["train", str(data), "--out", str(model), "--set", "train.steps=0"])
    assert result.exit_code == 0, result.output
    # median shorter side 290 px -> 256 px
    assert "working size 256 px" in result.output
    assert "per defect family: scratch" in result.output and "crack" in result.output  # 1 held out: 3 families
    from lista_cli.detection.scoring.checkpoint import load_checkpoint

    detector = load_checkpoint(model)
    assert detector.working_scale == pytest.approx(256 / 290)
    image = texture(rng, 150, 200, colour=False).astype(np.float32)[..., None] / 255
    assert tuple(detector.prepare(image).shape[-2:]) == (
        round(150 * detector.working_scale),
        round(200 * detector.working_scale),
    )
    assert detector.detect_batch([image])[0].anomaly_map.shape == (150, 200)


def test_messages_echo_what_the_user_typed_literally(tmp_path):
    """No Rich markup or :emoji: codes in what the user typed (":-1:" once became an emoji)."""
    image = tmp_path / "a.png"
    Image.fromarray(np.full((9, 9), 128, dtype=np.uint8)).save(image)
    result = runner.invoke(app, ["deblur", str(image), "--psf", "gaussian:-1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--psf gaussian:-1:" in result.output
    odd = tmp_path / "no:-1:such[bold]folder"
    result = runner.invoke(app, ["train", str(odd), "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 1 and f"error: {odd}: no such folder" in result.output
    # help text too: "[report]" is not Rich markup
    assert "lista-cli[report]" in runner.invoke(app, ["report", "--help"]).output
