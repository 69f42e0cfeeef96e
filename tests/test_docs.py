"""What README and docstrings state about the code, checked against the code."""

from __future__ import annotations

import re

import numpy as np
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.config import Config
from lista_cli.detection.model import model
from lista_cli.detection.training import calibration
from lista_cli.restoration.deblur import DEFAULT_RULE

from .conftest import REPO

runner = CliRunner()
README = (REPO / "README.md").read_text()


def bullet(start: str) -> str:
    """The README bullet that begins with `start`, up to the next bullet, spaces normalised."""
    text = README[README.index(start) :]
    end = re.search(r"\n(- \*\*|#)", text[1:])
    return " ".join((text[: end.start() + 1] if end else text).split())


def test_alpha_auto_names_the_rule_each_regulariser_defaults_to():
    text = bullet("- **α** (`--alpha`)")
    assert DEFAULT_RULE == {"laplacian": "upre", "identity": "discrepancy"}
    assert "UPRE" in text and "default with `--reg laplacian`" in text and "discrepancy principle" in text


def test_calibration_is_said_to_stop_where_it_stops():
    text = bullet("- **train**")
    assert f"at most {calibration.MAX_CALIBRATION_IMAGES} normal images" in text
    assert "every normal image is used for calibration" not in README


def test_the_patch_dimension_in_the_model_docstring_is_the_default_one():
    p = Config().patch.size
    assert f"d = 3 p^2 = {3 * p * p} with the default {p} px" in " ".join(model.image_directions.__doc__.split())


def test_batch_sets_how_many_images_are_read_at_a_time_and_never_changes_a_map(tiny_trained, tmp_path):
    checkpoint, data = tiny_trained
    maps = {}
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        args = ["detect", str(checkpoint), str(data / "test"), "--out", str(out), "--batch", str(batch), "-q"]
        assert runner.invoke(app, args).exit_code == 0
        maps[batch] = {p.relative_to(out): np.load(p) for p in sorted(out.rglob("*_map.npy"))}
    assert maps[1].keys() == maps[3].keys() and len(maps[1]) == 4
    assert all(np.array_equal(maps[1][k], maps[3][k]) for k in maps[1])  # bit-identical
    help_text = " ".join(runner.invoke(app, ["detect", "--help"]).output.split())
    assert "read at a time" in help_text and "model batch" not in help_text
    assert "read at a time" in bullet("- **detect**")
