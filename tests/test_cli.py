"""The real CLI through typer.testing.CliRunner: exit codes, files, messages."""

import copy
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
    assert payload["format"] == "lista-checkpoint" and payload["format_version"] == 8
    assert payload["config"]["train"]["steps"] == 4
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
    assert extra["channels"] == 3 and extra["factors"] == [1, 2]
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
    for path, message in [(cut, "not a lista checkpoint"), (future, "incompatible")]:
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


def as_format_4(detector) -> dict:
    """The payload lista wrote before format 5: scales, calibration and context apart."""

    def state(module):
        return {key: value.detach().clone() for key, value in module.state_dict().items()}

    return {
        "format": "lista-checkpoint",
        "format_version": 4,
        "lista_version": "0.1.0",
        "config": detector.config.to_dict(),
        "channels": detector.channels,
        "calibration": detector.calibration.to_dict(),
        "working_scale": detector.working_scale,
        "context": None,
        "scales": [
            {"factor": s.factor, "state": state(s.model), "bank": None if s.bank is None else state(s.bank)}
            for s in detector.scales
        ],
        "extra": {},
    }


def test_checkpoint_keeps_the_code_bank_and_reads_formats_1_to_7(model, tmp_path, mvtec):
    from lista_cli.detection.checkpoint import load_checkpoint
    from lista_cli.io.imageio import read_image

    detector = load_checkpoint(model)
    bank = detector.scales[0].bank
    assert bank is not None and bank.codes.shape[1] == bank.basis.shape[1]
    assert len(detector.map_weights) == 6 and all(w >= 0 for w in detector.map_weights)  # 3 maps x 2 scales
    assert sum(detector.map_weights) > 0 and bank.has_residual
    image = read_image(next((mvtec / "test" / "spot").iterdir()))
    with_bank = detector.detect_batch([image])[0].anomaly_map
    # formats 5 and 6 are the config and the detector's state_dict, nothing else
    payload = torch.load(model, weights_only=True)
    assert set(payload) == {"format", "format_version", "lista_version", "config", "state", "extra"}
    assert payload["state"].keys() == detector.state_dict().keys()
    # format 6 had no level damping: it loads without, and its config says so
    assert detector.calibration.level_reference is not None and detector.config.score.level_damping
    six = copy.deepcopy(payload)
    six["format_version"] = 6
    for key in ("level_reference", "level_cap"):
        del six["state"]["_extra_state"]["calibration"][key]
    del six["config"]["score"]["level_damping"]
    torch.save(six, tmp_path / "v6.pt")
    undamped = load_checkpoint(tmp_path / "v6.pt")
    assert undamped.calibration.level_reference is None and not undamped.config.score.level_damping
    # format 7 had no sparse divisors: it loads without them (S maps as before), its config says so
    assert all(len(s.bank.sparse_divisors) == len(s.bank.codes) for s in detector.scales)
    assert detector.config.score.sparse_damping
    seven = copy.deepcopy(payload)
    seven["format_version"] = 7
    for key in [k for k in seven["state"] if k.endswith("sparse_divisors")]:
        del seven["state"][key]
    del seven["config"]["score"]["sparse_damping"]
    torch.save(seven, tmp_path / "v7.pt")
    plain = load_checkpoint(tmp_path / "v7.pt")
    assert not plain.config.score.sparse_damping and not any(len(s.bank.sparse_divisors) for s in plain.scales)
    without_divisors = plain.detect_batch([image])[0].anomaly_map
    assert without_divisors.shape == with_bank.shape and not np.allclose(without_divisors, with_bank)
    # format 5 did not name the S maps' smoothing: the Gaussian
    payload["format_version"] = 5
    payload["state"]["_extra_state"]["calibration"]["sparse_smoothing"] = "oriented"
    torch.save(payload, tmp_path / "oriented.pt")
    assert load_checkpoint(tmp_path / "oriented.pt").calibration.sparse_smoothing == "oriented"
    del payload["state"]["_extra_state"]["calibration"]["sparse_smoothing"]
    # ... nor gave code maps their own smoothing: they keep the other maps' sigma
    del payload["config"]["score"]["code_smooth_sigma"]
    payload["config"]["score"]["smooth_sigma"] = 1.5
    torch.save(payload, tmp_path / "v5.pt")
    older = load_checkpoint(tmp_path / "v5.pt")
    assert older.calibration.sparse_smoothing == "gaussian"
    assert older.config.score.code_smooth_sigma == 1.5 and detector.config.score.code_smooth_sigma == 4.0
    # a format-4 file (scales, calibration and context stored apart) scores as format 7 did
    torch.save(as_format_4(detector), tmp_path / "v4.pt")
    assert np.array_equal(load_checkpoint(tmp_path / "v4.pt").detect_batch([image])[0].anomaly_map, without_divisors)
    # a file from before residual levels (format 3, two maps per scale) loads and scores with them
    payload = as_format_4(detector)
    payload["format_version"] = 3
    for entry in payload["scales"]:
        del entry["bank"]["residual_levels"]
    weights = payload["calibration"]["map_weights"]
    payload["calibration"]["map_weights"] = [w for i, w in enumerate(weights) if i % 3 != 2]
    torch.save(payload, tmp_path / "v3.pt")
    v3 = load_checkpoint(tmp_path / "v3.pt")
    assert v3.kinds == ["sparse", "code"] * 2 and not v3.scales[0].bank.has_residual
    assert v3.detect_batch([image])[0].anomaly_map.shape == with_bank.shape
    # a format-2 file (banks without cell radii) loads with radius 1: plain nearest-code distances
    payload = as_format_4(detector)
    payload["format_version"] = 2
    for entry in payload["scales"]:
        del entry["bank"]["radii"]
    torch.save(payload, tmp_path / "v2.pt")
    v2 = load_checkpoint(tmp_path / "v2.pt")
    assert all(torch.equal(s.bank.radii, torch.ones(len(s.bank.codes))) for s in v2.scales)
    assert bank.radii.min() > 0 and not torch.equal(bank.radii, torch.ones(len(bank.codes)))
    assert v2.detect_batch([image])[0].anomaly_map.shape == with_bank.shape
    # a format-1 file (one model under "state", no bank) loads and scores with the sparse part alone
    payload = as_format_4(detector)
    payload["format_version"] = 1
    payload["state"] = payload.pop("scales")[0]["state"]
    payload["config"]["data"].pop("scales")  # format 1 had no data.scales: the default must not apply
    del payload["calibration"]["map_weights"]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    legacy = load_checkpoint(old)
    assert legacy.scales[0].bank is None and legacy.map_weights == [1.0] and legacy.config.data.scales == [1]
    sparse_only = legacy.detect_batch([image])[0].anomaly_map
    assert sparse_only.shape == with_bank.shape and not np.allclose(sparse_only, with_bank)


def test_training_that_only_hurts_keeps_the_untrained_model(mvtec, tmp_path):
    """A wild learning rate wrecks the layers; validation must keep step 0 (ISTA itself)."""
    from lista_cli.config import load_config
    from lista_cli.detection.train import train

    overrides = ["train.steps=6", "train.val_every=2", "train.batch=4", "score.bank_size=0"]
    wrecked = train(mvtec, load_config(None, [*overrides, "train.lr=50"]), tmp_path / "wrecked.pt")
    train(mvtec, load_config(None, [*overrides, "model.learn=false"]), tmp_path / "ista.pt")
    assert len(wrecked.scales) == 2  # the default scales 1 and 2: each keeps its own best step
    for scale in wrecked.scales:
        assert scale["best_step"] == 0 and scale["val_auroc_best"] == scale["val_auroc_start"]
    a, b = (torch.load(tmp_path / name, weights_only=True)["state"] for name in ("wrecked.pt", "ista.pt"))
    layers = [k for k in a if ".model." in k]
    assert len(layers) > 4 and all(torch.equal(a[k], b[k]) for k in layers)


@pytest.mark.parametrize("background", ["image", "both"])
def test_image_background_trains_detects_and_tiles(mvtec, tmp_path, background):
    from lista_cli.detection.checkpoint import load_checkpoint

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
    whole = detector.anomaly_maps(image[None])[0]
    detector.config.data.tile_size = 64
    tiled = detector.tiled_map(image)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()


def test_a_scale_too_small_for_a_patch_is_skipped_with_a_warning(tmp_path, rng):
    from lista_cli.detection.checkpoint import load_checkpoint

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
    from lista_cli.detection.checkpoint import load_checkpoint

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


def test_context_map_trains_saves_tiles_and_leaves_images_out(mvtec, tmp_path):
    from lista_cli.detection.checkpoint import load_checkpoint
    from lista_cli.io.imageio import read_image

    model = tmp_path / "context.pt"
    result = runner.invoke(app, ["train", str(mvtec), "--out", str(model), *FAST, "--set", "score.context=true"])
    assert result.exit_code == 0, result.output
    detector = load_checkpoint(model)
    assert detector.context is not None and detector.kinds == ["sparse", "code", "residual"] * 2 + ["context"]
    assert len(detector.map_weights) == 7
    image = read_image(next((mvtec / "test" / "spot").iterdir()))
    whole = detector.detect_batch([image])[0].anomaly_map
    assert whole.shape == (37, 45) and np.isfinite(whole).all()
    detector.config.data.tile_size = 16  # tiles aligned to every scale's grid: the same map
    np.testing.assert_allclose(detector.detect_batch([image])[0].anomaly_map, whole, rtol=1e-5, atol=1e-5)
