"""Calibration fits the thresholds on exactly the statistic `lista detect` computes."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.config import load_config
from lista_cli.detection.scoring.checkpoint import load_checkpoint
from lista_cli.detection.training import calibration
from lista_cli.detection.training.train import _split
from lista_cli.detection.training.training_data import load_training_images
from lista_cli.io.imageio import read_image

from .conftest import make_mvtec, train_tiny

runner = CliRunner()


def test_calibration_uses_held_out_images_and_a_seeded_share_of_the_rest(monkeypatch):
    class Scorer:  # leaving one out changes nothing here
        def without_image(self, number):
            return self

    images = [torch.full((1, 4, 5), float(i)) for i in range(10)]
    held = [torch.full((1, 4, 5), -1.0)] * 2
    monkeypatch.setattr(calibration, "MAX_CALIBRATION_IMAGES", 6)
    examples = calibration.normal_examples(Scorer(), images, held, seed=0)
    values = [float(image[0, 0, 0]) for _, image, _ in examples]
    assert len(examples) == 6 and values[:2] == [-1.0, -1.0] and len(set(values[2:])) == 4
    assert [n for _, _, n in examples[:2]] == [None, None] and all(
        values[i + 2] == n for i, (_, _, n) in enumerate(examples[2:])
    )
    again = calibration.normal_examples(Scorer(), images, held, seed=0)
    assert values == [float(image[0, 0, 0]) for _, image, _ in again]
    monkeypatch.setattr(calibration, "MAX_CALIBRATION_IMAGES", 200)
    assert len(calibration.normal_examples(Scorer(), images, [], seed=0)) == 10  # under the cap: every image


def test_at_most_200_normal_images_are_calibrated_on():
    """README: calibration stops at 200 normal images (every held-out one, then a seeded choice)."""

    class Scorer:
        def without_image(self, number):
            return self

    images = [torch.zeros(1, 2, 2)] * 230
    assert calibration.MAX_CALIBRATION_IMAGES == 200
    assert len(calibration.normal_examples(Scorer(), images, images[:50], seed=0)) == 200


def test_the_recorded_normal_scores_are_what_detect_prints(tmp_path, rng):
    """Trained on 37 x 45 images resized to 30 px for the model: the score calibration records
    for each held-out normal image (the detector as saved) is the score `lista detect` prints
    for that image at its input size, to the last bit."""
    data = make_mvtec(tmp_path / "data", rng)
    overrides = ["--set", "data.image_size=30"]
    checkpoint = train_tiny(data, tmp_path / "model.pt", *overrides)
    detector = load_checkpoint(checkpoint)
    config = load_config(None, [o for o in overrides if o != "--set"])
    loaded = load_training_images(data, config, lambda message: None)
    held_paths, _ = _split(loaded.paths, config)
    assert loaded.input_sizes[0] == (37, 45) and tuple(loaded.tensors[0].shape[-2:]) == (30, 36)  # resized
    recorded = detector.calibration.image_scores[: len(held_paths)]
    result = runner.invoke(
        app, ["detect", str(checkpoint), *map(str, held_paths), "--out", str(tmp_path / "o"), "--json", "-q"]
    )
    assert result.exit_code == 0, result.output
    printed = {json.loads(line)["image"]: json.loads(line)["score"] for line in result.stdout.splitlines()}
    scores = [printed[next(k for k in printed if k.endswith(path.name))] for path in held_paths]
    assert scores == pytest.approx(recorded, rel=1e-7)  # as printed (8 significant digits)
    arrays = [read_image(path) for path in held_paths]
    assert [result.score for result in detector.detect_batch(arrays)] == recorded  # to the last bit
    # the statistic at the working size (what calibration used to record) is another number
    working = [detector.finish(detector.working_map(detector.prepare(a)), (30, 36))[1] for a in arrays]
    assert all(w != r for w, r in zip(working, recorded, strict=True))
