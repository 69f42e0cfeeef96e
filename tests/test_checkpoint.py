"""The one checkpoint format: inference state and config, refused when older, damaged or foreign."""

from __future__ import annotations

import copy

import pytest
import torch
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.detection.scoring.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from .conftest import SAMPLE

runner = CliRunner()


def refused(path, tmp_path) -> str:
    """lista detect on a bad model file: exit 1, one line naming the file; -> that line."""
    result = runner.invoke(app, ["detect", str(path), str(SAMPLE / "test"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in result.output
    return lines[0]


def test_a_checkpoint_round_trips_bit_for_bit(tiny_trained, tmp_path):
    """Written, read and written again by this version: the same payload, every tensor bit
    for bit (the files differ only in the archive's temporary name)."""
    once, twice = tmp_path / "once.pt", tmp_path / "twice.pt"
    save_checkpoint(once, load_checkpoint(tiny_trained[0]))
    save_checkpoint(twice, load_checkpoint(once))
    for a, b in ((tiny_trained[0], once), (once, twice)):
        first, second = (torch.load(p, weights_only=True) for p in (a, b))
        assert first.keys() == second.keys() and first["config"] == second["config"]
        assert first["state"].keys() == second["state"].keys()
        for key, value in first["state"].items():
            other = second["state"][key]
            if isinstance(value, torch.Tensor):
                assert value.dtype == other.dtype and torch.equal(value, other), key
            else:
                assert value == other, key


@pytest.mark.parametrize("version", [1, 5, 8])
def test_older_formats_are_refused_with_the_version_that_reads_them(tiny_trained, tmp_path, version):
    payload = torch.load(tiny_trained[0], weights_only=True)
    payload["format_version"] = version
    torch.save(payload, tmp_path / "old.pt")
    line = refused(tmp_path / "old.pt", tmp_path)
    assert f"checkpoint format {version}" in line and "read by lista 0.1.0" in line and "retrain" in line


def damaged_payloads(payload: dict) -> dict[str, dict]:
    """A changed patch size, NaN weights, a NaN threshold, an infinite mask threshold."""
    cases = {}
    patch = copy.deepcopy(payload)
    patch["config"]["patch"]["size"] = 8
    patch["config"]["patch"]["stride"] = 4
    cases["patch size"] = patch
    weights = copy.deepcopy(payload)
    key = next(k for k in weights["state"] if k.endswith("model.w_step"))
    weights["state"][key][0, 0] = float("nan")
    cases["NaN weights"] = weights
    for name, field in (("NaN threshold", "threshold"), ("infinite mask threshold", "pixel_threshold")):
        bad = copy.deepcopy(payload)
        bad["state"]["_extra_state"]["calibration"][field] = float("nan" if "NaN" in name else "inf")
        cases[name] = bad
    return cases


def test_damaged_and_foreign_checkpoints_are_refused_with_one_line(tiny_trained, tmp_path):
    payload = torch.load(tiny_trained[0], weights_only=True)
    for name, bad in damaged_payloads(payload).items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        torch.save(bad, path)
        with pytest.raises(CheckpointError, match="damaged lista checkpoint"):
            load_checkpoint(path)
        assert "damaged lista checkpoint" in refused(path, tmp_path), name
    stale = copy.deepcopy(payload)
    stale["config"]["score"]["context"] = False  # a key this lista no longer has
    torch.save(stale, tmp_path / "stale.pt")
    line = refused(tmp_path / "stale.pt", tmp_path)
    assert "unknown config key 'score.context'" in line and "retrain the model" in line
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "not a lista checkpoint (empty file)" in refused(empty, tmp_path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert "not a lista checkpoint" in refused(foreign, tmp_path)
