"""Thresholds set from examples: against brute force over every candidate threshold, and
`lista threshold` / `lista detect --threshold` end to end."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.detection.evaluation.thresholds import (
    Examples,
    Target,
    ThresholdError,
    choose,
    highest_threshold_for_recall,
    lowest_threshold_for_fpr,
    parse_target,
)

runner = CliRunner()


@pytest.fixture
def trained(tiny_trained):
    """(model, its MVTec-style folder), trained once per test run."""
    return tiny_trained


def _flagged(scores, threshold):
    return int((np.asarray(scores) >= threshold).sum())


@pytest.mark.parametrize("n", [1, 7, 20, 101])
def test_fpr_threshold_is_the_lowest_meeting_the_cap(n):
    rng = np.random.default_rng(n)
    normal = np.round(rng.random(n), 2)  # ties
    for max_fpr in (0.0, 0.01, 0.05, 0.1, 0.5, 0.99):
        threshold = lowest_threshold_for_fpr(normal, max_fpr)
        cap = math.floor(max_fpr * n + 1e-9)
        # brute force over the scores: the most images any threshold meeting the cap flags
        most = max(_flagged(normal, t) for t in np.r_[normal, np.inf] if _flagged(normal, t) <= cap)
        assert _flagged(normal, threshold) == most


@pytest.mark.parametrize("m", [1, 9, 40])
def test_recall_threshold_is_the_highest_meeting_the_recall(m):
    defective = np.round(np.random.default_rng(m).random(m), 2)
    for recall in (0.1, 0.5, 0.95, 1.0):
        threshold = highest_threshold_for_recall(defective, recall)
        assert _flagged(defective, threshold) >= recall * m - 1e-9
        assert max(t for t in defective if _flagged(defective, t) >= recall * m - 1e-9) == threshold


def test_f1_target_under_a_cap_is_the_best_f1_among_allowed_thresholds():
    rng = np.random.default_rng(3)
    normal, defective = rng.normal(0, 1, 30), rng.normal(1.2, 1, 25)
    examples = Examples(normal, defective, [], [])
    for cap in (None, 0.2, 0.05):
        threshold = choose(examples, cap, Target("f1"))
        floor = -np.inf if cap is None else lowest_threshold_for_fpr(normal, cap)

        def f1(t):
            tp, fp = _flagged(defective, t), _flagged(normal, t)
            return 2 * tp / (2 * tp + fp + (len(defective) - tp))

        best = max(f1(t) for t in np.r_[normal, defective, floor] if t >= floor)
        assert threshold >= floor and f1(threshold) == pytest.approx(best)


def test_impossible_or_invalid_requests_are_refused():
    examples = Examples(np.array([0.1, 0.2, 0.9]), np.array([0.3, 0.8]), [], [])
    with pytest.raises(ThresholdError, match="cannot both be met"):
        choose(examples, 0.0, Target("recall", 1.0))  # finding 0.3 flags 0.9 as well
    with pytest.raises(ThresholdError, match="needs defective images"):
        choose(Examples(np.array([0.1]), np.array([]), [], []), None, Target("f1"))
    for text in ("recall=0", "recall=1.5", "recall=x", "precision=0.9"):
        with pytest.raises(ThresholdError, match="expected f1 or recall"):
            parse_target(text)
    assert parse_target("recall=0.95") == Target("recall", 0.95)


def test_threshold_command_writes_a_new_model_that_detect_uses(trained, tmp_path):
    from lista_cli.detection.scoring.checkpoint import load_checkpoint

    model, mvtec = trained
    new = tmp_path / "strict.pt"
    before = model.read_bytes()
    result = runner.invoke(
        app, ["threshold", str(model), str(mvtec / "test" / "good"), "--max-fpr", "0", "--out", str(new), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[0])
    assert report["normal_flagged"] == 0 and report["normal_images"] == 2
    assert model.read_bytes() == before  # the input model is never changed
    strict = load_checkpoint(new)
    assert strict.threshold == pytest.approx(report["threshold"])
    # the labelled folder: recall 1 finds both defective images; detect uses the new threshold
    result = runner.invoke(
        app, ["threshold", str(model), str(mvtec), "--target", "recall=1", "--out", str(new), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[0])
    assert report["defective_found"] == report["defective_images"] == 2 and report["recall"] == 1.0
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["detect", str(new), str(mvtec / "test" / "spot"), "--out", str(out), "--json", "--quiet"]
    )
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 0 and all(row["anomalous"] and row["regions"] for row in rows)
    # --threshold overrides it for one run: nothing reaches a huge threshold
    result = runner.invoke(
        app,
        [
            "detect",
            str(new),
            str(mvtec / "test" / "spot"),
            "--out",
            str(tmp_path / "out_override"),  # a folder records one model and threshold (its manifest)
            "--json",
            "--quiet",
            "--threshold",
            "1e9",
        ],
    )
    assert result.exit_code == 0 and not any(json.loads(line)["anomalous"] for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-fpr", "0.1"], "give --out NEW"),
        (["--max-fpr", "0.1", "--out", "SELF"], "is the model file itself"),
        (["--out", "NEW"], "give --max-fpr, --target or both"),
        (["--max-fpr", "1.5", "--out", "NEW"], "--max-fpr 1.5: expected a share in [0, 1)"),
        (["--target", "f1", "--out", "NEW", "--data", "good"], "needs defective images"),
        (["--max-fpr", "0.1", "--out", "NEW", "--data", "empty"], "no images"),
    ],
)
def test_threshold_command_bad_requests_are_one_line_exit_1(trained, tmp_path, args, message):
    model, mvtec = trained
    (tmp_path / "empty").mkdir()
    data = {"good": mvtec / "test" / "good", "empty": tmp_path / "empty"}
    folder = mvtec
    if "--data" in args:
        folder = data[args[args.index("--data") + 1]]
        args = args[: args.index("--data")]
    args = [str(model) if a == "SELF" else str(tmp_path / "new.pt") if a == "NEW" else a for a in args]
    result = runner.invoke(app, ["threshold", str(model), str(folder), *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "new.pt").exists()


def test_in_place_rewrites_the_model_with_the_new_thresholds(trained, tmp_path):
    import shutil

    from lista_cli.detection.scoring.checkpoint import load_checkpoint

    model, mvtec = trained
    copy = tmp_path / "copy.pt"
    shutil.copy(model, copy)
    before = load_checkpoint(copy)
    result = runner.invoke(app, ["threshold", str(copy), str(mvtec), "--target", "f1", "--in-place", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[0])
    after = load_checkpoint(copy)
    assert after.threshold == pytest.approx(report["threshold"]) and after.pixel_threshold <= after.threshold
    assert after.calibration.map_weights == before.calibration.map_weights  # only the thresholds change
    assert [s.model.state_dict().keys() for s in after.scales] == [s.model.state_dict().keys() for s in before.scales]
