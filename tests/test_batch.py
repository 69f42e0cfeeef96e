"""Batch jobs: stdin lists, shards, merge, resume, determinism, tiles."""

import csv
from pathlib import Path, PurePath

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.detection.scoring.checkpoint import load_checkpoint
from lista_cli.io.batch import detect
from lista_cli.io.inputs import InputError, InputImage, collect_inputs, parse_shard, select_shard

from .conftest import texture, train_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_trained):
    root = tmp_path_factory.mktemp("batch")
    rng = np.random.default_rng(1)
    images = root / "images"
    for i in range(23):
        sub = images / f"line{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(rng, 37, 45)).save(sub / f"img{i:02d}.png")
    return tiny_trained[0], images


def _scores(path):
    return {row["image"]: row for row in csv.DictReader(open(path))}


def test_shards_cover_every_image_once_and_merge(setup, tmp_path):
    model, images = setup
    out = tmp_path / "out"
    for index in range(4):
        result = runner.invoke(
            app, ["detect", str(model), str(images), "--out", str(out), "--shard", f"{index}/4", "-q"]
        )
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["merge-scores", str(out)])
    assert result.exit_code == 0 and "merged 23 rows from 4 shards" in result.stderr
    merged = _scores(out / "scores.csv")
    assert len(merged) == 23
    whole = tmp_path / "whole"
    assert runner.invoke(app, ["detect", str(model), str(images), "--out", str(whole), "-q"]).exit_code == 0
    single = _scores(whole / "scores.csv")
    assert {k: v["score"] for k, v in merged.items()} == {k: v["score"] for k, v in single.items()}


def test_merge_needs_every_shard(setup, tmp_path):
    model, images = setup
    out = tmp_path / "out"
    runner.invoke(app, ["detect", str(model), str(images), "--out", str(out), "--shard", "1/3", "-q"])
    result = runner.invoke(app, ["merge-scores", str(out)])
    assert result.exit_code == 1 and "shard(s) 0, 2 of 3 have no scores file yet" in result.stderr


def test_merge_refuses_an_image_scored_in_two_shards(setup, tmp_path):
    model, images = setup
    out = tmp_path / "out"
    for index in range(2):
        runner.invoke(app, ["detect", str(model), str(images), "--out", str(out), "--shard", f"{index}/2", "-q"])
    first = (out / "scores.shard-0-of-2.csv").read_text().splitlines()
    second = out / "scores.shard-1-of-2.csv"
    row = first[1].split(",")
    row[1] = "0.123"  # the same image with another score: which is right cannot be known
    second.write_text(second.read_text() + ",".join(row) + "\n")
    result = runner.invoke(app, ["merge-scores", str(out)])
    assert result.exit_code == 1 and "is scored in more than one shard" in result.stderr
    assert not (out / "scores.csv").exists()


def test_shard_selection_is_a_partition():
    images = [InputImage(Path(f"{i}.png"), PurePath(f"d/{i:03d}")) for i in range(50)]
    shuffled = images[::-1]
    parts = [select_shard(shuffled, (i, 7)) for i in range(7)]
    names = sorted(img.name for part in parts for img in part)
    assert names == sorted(img.name for img in images)
    for bad in ["3/3", "-1/2", "a/b", "2"]:
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_resume_skips_finished_images_and_repairs_a_cut_row(setup, tmp_path):
    model, images = setup
    detector = load_checkpoint(model)
    found = collect_inputs([str(images)]).images
    out = tmp_path / "out"
    detect(detector, found[:10], out)
    # Simulate a kill: half a row at the end, and one image with its outputs but no row.
    text = (out / "scores.csv").read_text().splitlines(keepends=True)
    (out / "scores.csv").write_text("".join(text[:-1]) + text[-1][:12])
    summary = detect(detector, found, out, skip_existing=True)
    assert summary.skipped == 9 and summary.processed == 14
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 23 and len({r["image"] for r in rows}) == 23
    again = detect(detector, found, out, skip_existing=True)
    assert again.skipped == 23 and again.processed == 0


def test_stdin_list_and_extension_filter(setup, tmp_path):
    model, images = setup
    paths = sorted(str(p) for p in images.rglob("*.png"))[:4]
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", str(model), "-", "--out", str(out), "-q"], input="\n".join(paths) + "\n")
    assert result.exit_code == 0, result.output
    assert len(_scores(out / "scores.csv")) == 4
    found = collect_inputs([str(images)], extensions=(".jpg",))
    assert not found.images and "folder contains no images (.jpg)" in found.problems[0][1]
    assert len(collect_inputs([str(images)], recursive=False).images) == 0


def test_same_maps_across_runs_and_batch_sizes(setup, tmp_path):
    model, images = setup
    detector = load_checkpoint(model)
    found = collect_inputs([str(images)]).images
    detect(detector, found, tmp_path / "a", batch=1)
    detect(detector, found, tmp_path / "b", batch=16)
    detect(load_checkpoint(model), found, tmp_path / "c", batch=5)
    for item in found:
        maps = [np.load(tmp_path / d / f"{item.name}_map.npy") for d in "abc"]
        assert np.array_equal(maps[0], maps[1]) and np.array_equal(maps[0], maps[2])


@pytest.fixture(scope="module")
def multiscale(setup, tmp_path_factory):
    from .conftest import make_mvtec

    data = make_mvtec(tmp_path_factory.mktemp("multiscale") / "data", np.random.default_rng(2), size=(53, 61))
    return train_tiny(data, data.parent / "ms.pt", "--set", "data.scales=[1,2,3]")


@pytest.mark.parametrize("which", ["default", "multiscale", "oriented"])
def test_tiles_equal_the_whole_image(setup, multiscale, which, rng):
    model = multiscale if which == "multiscale" else setup[0]
    detector = load_checkpoint(model)
    detector.config.data.image_size = None
    if which == "oriented":  # S maps smoothed along trails: a wider reach, blocks of 2 px
        detector.calibration.sparse_smoothing = "oriented"
    assert [int(s.factor) for s in detector.scales] == ([1, 2, 3] if which == "multiscale" else [1, 2, 4])
    image = detector.prepare(texture(rng, 97, 83).astype(np.float32) / 255)  # sides not multiples of 2 or 3
    whole = detector.working_map(image)
    detector.config.data.tile_size = 16
    assert detector.tile_rule.needs_tiles(*image.shape[-2:])
    tiled = detector.working_map(image)
    # Up to rounding: matrix products block differently for a tile's patch count, and the
    # residual level blend (typicality.blend_weights) magnifies that near three-way ties.
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


def test_multiscale_maps_add_every_scale(multiscale, rng):
    detector = load_checkpoint(multiscale)
    image = detector.prepare(texture(rng, 53, 61).astype(np.float32) / 255)
    components = detector.component_maps(image[None])
    assert components.shape == (1, 9, *image.shape[-2:])  # ||s||, code distance, residual level at 3 scales
    assert detector.kinds == ["sparse", "code", "residual"] * 3
    assert all(float(components[0, i].abs().sum()) > 0 for i in range(9))
    assert len(detector.map_weights) == 9
    expected = detector.combine(components)
    torch.testing.assert_close(detector.anomaly_maps(image[None]), expected)


def test_output_names_stay_inside_out(setup, tmp_path):
    model, _ = setup
    detector = load_checkpoint(model)
    source = tmp_path / "x.png"
    Image.fromarray(texture(np.random.default_rng(0), 30, 30)).save(source)
    sneaky = InputImage(source, PurePath("../../escaped"))
    summary = detect(detector, [sneaky], tmp_path / "out")
    assert summary.processed == 0 and "would leave the output folder" in summary.failures[0][1]
    assert not list(tmp_path.parent.glob("escaped*"))


def _region_rows(path):
    return sorted(tuple(row) for row in list(csv.reader(open(path)))[1:])


def test_regions_file_matches_masks_and_survives_shards_and_resume(setup, tmp_path):
    from lista_cli.detection.scoring.regions import label_regions

    model, images = setup
    detector = load_checkpoint(model)
    detector.calibration.threshold = detector.calibration.pixel_threshold = 0.3 * detector.threshold
    found = collect_inputs([str(images)]).images
    whole = tmp_path / "whole"
    detect(detector, found, whole)
    rows = _region_rows(whole / "regions.csv")
    scores = _scores(whole / "scores.csv")
    assert rows and {row[0] for row in rows} == {k for k, v in scores.items() if v["anomalous"] == "True"}
    for image, row in scores.items():  # regions = the connected parts of the mask PNG
        mask = np.asarray(Image.open(whole / row["mask"])) > 0
        mine = [r for r in rows if r[0] == image]
        assert label_regions(mask)[1] == len(mine) and mask.sum() == sum(int(r[6]) for r in mine)
    # a kill after an image's region rows but before its scores row: resume writes them once
    out = tmp_path / "out"
    detect(detector, found[:10], out)
    text = (out / "scores.csv").read_text().splitlines(keepends=True)
    (out / "scores.csv").write_text("".join(text[:-1]))
    detect(detector, found, out, skip_existing=True)
    assert _region_rows(out / "regions.csv") == rows
    # shards merge into the same regions file
    sharded = tmp_path / "sharded"
    for index in range(3):
        detect(detector, select_shard(found, (index, 3)), sharded, shard=(index, 3))
    from lista_cli.io.batch import merge_scores

    merge_scores(sharded)
    assert _region_rows(sharded / "regions.csv") == rows
