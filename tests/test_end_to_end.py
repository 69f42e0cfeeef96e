"""Train and evaluate on the real PIPED sample in sample_data/ (a few seconds)."""

import csv

from typer.testing import CliRunner

from lista_cli.checkpoint import load_checkpoint
from lista_cli.cli import app
from lista_cli.evaluate import evaluate

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
