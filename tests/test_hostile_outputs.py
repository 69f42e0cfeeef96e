"""Hostile output folders and OS faults: an output folder is one model's record (manifest,
lock, rows merged, outputs never read back as inputs), files follow the umask, and every OS
failure is one line naming the path with a documented exit code; nothing written before is lost."""

import csv
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.io.manifest import LOCK, MANIFEST

from .conftest import csv_rows, exited_cleanly, texture

runner = CliRunner()


def _detect(model, inputs, out, *extra):
    return runner.invoke(app, ["detect", str(model), *map(str, inputs), "--out", str(out), "-q", *extra])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two folders of two images each."""
    root = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(7)
    for folder in ("first", "second"):
        (root / folder).mkdir()
        for i in range(2):
            Image.fromarray(texture(rng, 40, 44)).save(root / folder / f"{folder}{i}.png")
    return root


@pytest.fixture(scope="module")
def other_model(tiny_trained, tmp_path_factory):
    """The tiny model with other thresholds (a different file)."""
    model, data = tiny_trained
    other = tmp_path_factory.mktemp("other") / "other.pt"
    result = runner.invoke(
        app, ["threshold", str(model), str(data / "test" / "good"), "--max-fpr", "0.5", "-q", "--out", str(other)]
    )
    assert result.exit_code == 0, result.output
    return other


# --- one folder, one model's record -----------------------------------------------------------


def test_a_second_run_merges_its_rows_and_a_rerun_replaces_only_its_own(tiny_trained, images, tmp_path):
    model, out = tiny_trained[0], tmp_path / "out"
    exited_cleanly(_detect(model, [images / "first"], out), 0)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["model_sha256"] and manifest["threshold"] > 0 and manifest["config_sha256"]
    exited_cleanly(_detect(model, [images / "second"], out), 0)
    rows = csv_rows(out / "scores.csv")
    assert sorted(Path(r["image"]).name for r in rows) == ["first0.png", "first1.png", "second0.png", "second1.png"]
    assert all((out / r["map"]).is_file() for r in rows)  # the first run's files are listed, not orphans
    exited_cleanly(_detect(model, [images / "first" / "first0.png"], out), 0)  # scored again: one row, not two
    again = csv_rows(out / "scores.csv")
    assert len(again) == 4 and {r["image"] for r in again} == {r["image"] for r in rows}


@pytest.mark.parametrize("resume", [False, True])
def test_another_model_is_refused_and_the_folder_left_as_it_was(tiny_trained, other_model, images, tmp_path, resume):
    model, out = tiny_trained[0], tmp_path / "out"
    exited_cleanly(_detect(model, [images / "first"], out), 0)
    before = (out / "scores.csv").read_bytes()
    extra = ["--skip-existing"] if resume else []
    stderr = exited_cleanly(_detect(other_model, [images / "first", images / "second"], out, *extra), 1)
    assert f"{out}: holds the results of another model or threshold" in stderr and "model file" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert (out / "scores.csv").read_bytes() == before
    stderr = exited_cleanly(
        _detect(model, [images / "second"], out, "--threshold", "9.5"), 1
    )  # same model, other threshold
    assert "image threshold" in stderr and (out / "scores.csv").read_bytes() == before


def test_a_run_into_a_folder_another_run_holds_is_refused(tiny_trained, images, tmp_path):
    model, out = tiny_trained[0], tmp_path / "out"
    out.mkdir()
    with open(out / LOCK, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a running lista detect holds
        stderr = exited_cleanly(_detect(model, [images / "first"], out), 1)
        assert f"{out}: another lista run is writing into this folder" in stderr
        assert not (out / "scores.csv").exists()
        merge = exited_cleanly(runner.invoke(app, ["merge-scores", str(out)]), 1)
        assert "another lista run" in merge
    with open(out / LOCK, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # shards share the folder: they run side by side
        exited_cleanly(_detect(model, [images / "first"], out, "--shard", "0/2"), 0)
        with open(out / ".lista.shard-1-of-2.lock", "a+b") as shard:
            fcntl.flock(shard, fcntl.LOCK_EX)  # ... but one shard runs once at a time
            assert "shard 1/2 is already being written" in exited_cleanly(
                _detect(model, [images / "first"], out, "--shard", "1/2"), 1
            )
        assert "another lista run" in exited_cleanly(
            _detect(model, [images / "second"], out), 1
        )  # a whole run waits for shards


def test_merge_scores_keeps_the_rows_of_an_earlier_whole_run(tiny_trained, images, tmp_path):
    model, out = tiny_trained[0], tmp_path / "out"
    exited_cleanly(_detect(model, [images / "first"], out), 0)
    for index in range(2):
        exited_cleanly(_detect(model, [images / "second"], out, "--shard", f"{index}/2"), 0)
    exited_cleanly(runner.invoke(app, ["merge-scores", str(out)]), 0)
    assert sorted(Path(r["image"]).name for r in csv_rows(out / "scores.csv")) == [
        "first0.png",
        "first1.png",
        "second0.png",
        "second1.png",
    ]


@pytest.mark.parametrize("where", ["same", "inside"])
def test_outputs_are_never_read_back_as_inputs(tiny_trained, images, tmp_path, where):
    model = tiny_trained[0]
    folder = tmp_path / "in"
    shutil.copytree(images / "first", folder)
    out = folder if where == "same" else folder / "results"
    for _ in range(2):
        exited_cleanly(_detect(model, [folder], out), 0)
        rows = csv_rows(out / "scores.csv")
        assert sorted(Path(r["image"]).name for r in rows) == ["first0.png", "first1.png"]
    assert not list(out.rglob("*_heatmap_heatmap.png")) and not (out / "results").exists()


def test_output_files_follow_the_umask_and_a_replaced_file_keeps_its_mode(tiny_trained, images, tmp_path):
    model, data = tiny_trained
    copy = tmp_path / "model.pt"
    shutil.copy(model, copy)
    os.chmod(copy, 0o444)
    previous = os.umask(0o027)
    try:
        out = tmp_path / "out"
        exited_cleanly(_detect(model, [images / "first"], out), 0)
        exited_cleanly(
            runner.invoke(
                app,
                [
                    "threshold",
                    str(copy),
                    str(data / "test" / "good"),
                    "--max-fpr",
                    "0.5",
                    "-q",
                    "--out",
                    str(tmp_path / "new.pt"),
                ],
            ),
            0,
        )
        exited_cleanly(
            runner.invoke(
                app, ["threshold", str(copy), str(data / "test" / "good"), "--max-fpr", "0.5", "-q", "--in-place"]
            ),
            0,
        )
    finally:
        os.umask(previous)
    written = [p for p in out.iterdir() if not p.name.startswith(".")] + [tmp_path / "new.pt"]
    assert {p.name for p in written} >= {
        "first0_heatmap.png",
        "first0_mask.png",
        "first0_map.npy",
        "scores.csv",
        "regions.csv",
        MANIFEST,
    }
    for path in written:
        assert oct(path.stat().st_mode & 0o777) == oct(0o640), path.name
    assert oct(copy.stat().st_mode & 0o777) == oct(0o444)


# --- every OS failure: one line naming the path ------------------------------------------------


@pytest.mark.parametrize("command", ["train", "export", "threshold", "eval"])
def test_an_output_file_that_cannot_be_written_is_refused_before_any_work(tiny_trained, tmp_path, command):
    model, data = tiny_trained
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("a file, not a folder")
    targets = {"folder": "is a folder", "plain/model.pt": "a part of the path is not a folder"}
    for target, problem in targets.items():
        path = str(tmp_path / target)
        args = {
            "train": ["train", str(data), "--out", path],
            "export": ["export", str(model), "--out", path],
            "threshold": ["threshold", str(model), str(data / "test" / "good"), "--max-fpr", "0.1", "--out", path],
            "eval": ["eval", str(model), str(data), "--report", path],
        }[command]
        stderr = exited_cleanly(runner.invoke(app, args), 1)
        assert path in stderr and problem in stderr and len(stderr.strip().splitlines()) == 1
        assert "trained on" not in stderr  # refused before training, not after


def test_detect_into_a_file_is_one_line(tiny_trained, images, tmp_path):
    (tmp_path / "plain").write_text("x")
    stderr = exited_cleanly(_detect(tiny_trained[0], [images / "first"], tmp_path / "plain"), 1)
    assert f"{tmp_path / 'plain'}: is a file, not an output folder" in stderr


@contextmanager
def file_size_limit(limit):
    """Writes past `limit` bytes fail with EFBIG (Python ignores SIGXFSZ), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _lista(args, **kwargs):
    """The real console script in a child process (for what a test runner cannot fake: a closed pipe)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = [sys.executable, "-c", "from lista_cli.cli import main; main()"]
    return subprocess.run(script + [str(a) for a in args], env=env, stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_write_that_fails_mid_batch_names_the_file_and_keeps_every_row_before(tiny_trained, tmp_path):
    model = tiny_trained[0]
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for name, (height, width) in {"a": (40, 44), "b": (40, 44), "c_big": (120, 130), "d": (40, 44)}.items():
        Image.fromarray(texture(rng, height, width)).save(folder / f"{name}.png")
    out = tmp_path / "out"
    with file_size_limit(40_000):
        failed = _detect(model, [folder], out, "--batch", "1")
    (line,) = exited_cleanly(failed, 1).strip().splitlines()
    assert str(out / "c_big_") in line and "cannot write" in line and "rerun with --skip-existing" in line
    assert [Path(r["image"]).name for r in csv_rows(out / "scores.csv")] == ["a.png", "b.png"]
    resumed = runner.invoke(app, ["detect", str(model), str(folder), "--out", str(out), "--skip-existing"])
    assert "2 images scored" in exited_cleanly(resumed, 0) and "2 skipped" in resumed.stderr
    assert len(csv_rows(out / "scores.csv")) == 4 and not list(out.glob(".*.tmp"))


def test_a_full_scores_file_names_it_and_keeps_the_rows_before(tiny_trained, images, tmp_path):
    model, out = tiny_trained[0], tmp_path / "out"
    exited_cleanly(_detect(model, [images / "first"], out), 0)
    with open(out / "scores.csv", "a", newline="") as handle:  # earlier rows, up to just below the limit
        writer = csv.writer(handle)
        for i in range(400):
            writer.writerow([f"old/{i}.png", 1.0, 0.5, False, f"o{i}_heatmap.png", f"o{i}_mask.png", f"o{i}_map.npy"])
    size = (out / "scores.csv").stat().st_size
    with file_size_limit(size + 60):
        stderr = exited_cleanly(_detect(model, [images / "second"], out), 1)
    assert f"{out / 'scores.csv'}: cannot write: file too large" in stderr
    names = [Path(r["image"]).name for r in csv_rows(out / "scores.csv")]
    assert names[:2] == ["first0.png", "first1.png"] and len(names) >= 402  # nothing earlier lost


def test_a_failed_model_save_names_it_and_keeps_the_old_model(tiny_trained, tmp_path):
    model, data = tiny_trained
    copy = tmp_path / "model.pt"
    shutil.copy(model, copy)
    before = copy.read_bytes()
    with file_size_limit(len(before) // 2):
        result = runner.invoke(
            app, ["threshold", str(copy), str(data / "test" / "good"), "--max-fpr", "0.5", "--in-place"]
        )
    assert f"{copy}: cannot write: " in exited_cleanly(result, 1)
    assert copy.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_closed_stdout_ends_detect_quietly_keeping_what_was_written(tiny_trained, images, tmp_path):
    model, out = tiny_trained[0], tmp_path / "out"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: `... --json | head -n 0`
    try:
        done = _lista(
            ["detect", model, images / "first", images / "second", "--out", out, "--json", "-q"], stdout=write_end
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""  # quiet: no traceback, no "Exception ignored"
    rows = csv_rows(out / "scores.csv")
    assert len(rows) == 1 and (out / rows[0]["map"]).is_file()  # the image scored before the pipe closed


def test_a_closed_stdout_at_the_last_flush_is_quiet(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = _lista(["config"], stdout=write_end)  # printed in one buffered write, flushed at exit
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == ""
