"""Train and evaluate on the real PIPED sample in sample_data/ (a few seconds)."""

import csv

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.detection.evaluation.evaluate import evaluate
from lista_cli.detection.scoring.checkpoint import load_checkpoint

from .conftest import SAMPLE


def test_real_paper_sample(tmp_path):
    model = tmp_path / "paper.pt"
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(SAMPLE), "--out", str(model), "--set", "train.steps=60", "--quiet"])
    assert result.exit_code == 0, result.output
    report = evaluate(load_checkpoint(model), SAMPLE)
    assert report["pixel_auroc"] > 0.95
    assert report["image_auroc"] > 0.9
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", str(model), str(SAMPLE / "test"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "scores.csv")))
    flagged = {r["image"].split("/")[-2] for r in rows if r["anomalous"] == "True"}
    assert "impurity" in flagged
    for row in rows:  # the mask is cut from the map the score comes from
        mask = np.asarray(Image.open(out / row["mask"]))
        assert (row["anomalous"] == "True") == bool(mask.any()), row["image"]


def test_real_sample_at_twice_its_resolution(tmp_path):
    """Paper photos upsampled to 256 px: auto keeps them at 256 px (the rule's side) and
    still finds the impurities."""
    data = tmp_path / "big"
    for path in SAMPLE.rglob("*.png"):
        target = data / path.relative_to(SAMPLE)
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(path)
        resample = Image.NEAREST if path.parent.parent.name == "ground_truth" else Image.BICUBIC
        image.resize((image.width * 2, image.height * 2), resample).save(target)
    model = tmp_path / "big.pt"
    result = CliRunner().invoke(app, ["train", str(data), "--out", str(model), "--set", "train.steps=0"])
    assert result.exit_code == 0, result.output
    assert "working size 256 px (x1)" in result.output
    detector = load_checkpoint(model)
    assert detector.working_scale == 1.0
    report = evaluate(detector, data)
    assert report["pixel_auroc"] > 0.95 and report["image_auroc"] > 0.9
