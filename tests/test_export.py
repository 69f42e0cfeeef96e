"""`lista export` and exported models: the ONNX graph scores like the checkpoint it came from.

The graph is traced from the detector's own forward pass (inference.py); the property
checked here is that ONNX Runtime running it, with the numpy steps around it, gives the
PyTorch detector's maps (within 1e-4 of the threshold) and decisions at any size.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.io.imageio import ImageError, read_image

from .conftest import REPO, SAMPLE, make_mvtec, train_tiny

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lista_cli.detection.export.export import export  # noqa: E402
from lista_cli.detection.export.onnx_model import OnnxDetector  # noqa: E402
from lista_cli.detection.scoring.checkpoint import load_checkpoint  # noqa: E402

runner = CliRunner()
TOLERANCE = 1e-4  # on maps divided by the image threshold (1.0 = the threshold)

VARIANTS = {  # one export each (tracing takes a while): together they cover every option the graph holds
    "gray, resized to 40 px, three scales, full layers, FISTA, top-k, oriented smoothing": [
        "--set",
        "data.channels=gray",
        "--set",
        "data.image_size=40",
        "--set",
        "data.scales=[1,2,3]",
        "--set",
        "model.layer_type=full",
        "--set",
        "model.fista=true",
        "--set",
        "score.image_score=topk",
        "--set",
        "score.sparse_smoothing=oriented",
    ],
    "ALISTA, absolute thresholds, no bank, no smoothing": [
        "--set",
        "model.layer_type=alista",
        "--set",
        "model.relative_threshold=false",
        "--set",
        "score.bank_size=0",
        "--set",
        "score.smooth_sigma=0",
        "--set",
        "score.code_smooth_sigma=0",
        "--set",
        "data.scales=[1]",
    ],
}


def fresh_images(rng: np.random.Generator) -> list[np.ndarray]:
    """Random images of odd sizes, gray and RGB, and crops of real paper photographs."""
    real = [read_image(path) for path in sorted((SAMPLE / "test").glob("*/*.png"))[:2]]
    return [
        rng.random((41, 53, 3), dtype=np.float32),
        rng.random((67, 39, 1), dtype=np.float32),
        real[0][3:104, 11:88],
        real[1][:, :, :1][5:, 7:],
    ]


def assert_same_results(detector, exported: OnnxDetector, arrays: list[np.ndarray]) -> float:
    """Maps within TOLERANCE of the threshold, the same decisions; -> the largest map gap."""
    largest = 0.0
    for array, expected, got in zip(arrays, detector.detect_batch(arrays), exported.detect_batch(arrays), strict=True):
        assert got.anomaly_map.shape == array.shape[:2]
        gap = float(np.abs(got.anomaly_map - expected.anomaly_map).max() / detector.threshold)
        assert gap <= TOLERANCE, f"{array.shape}: maps differ by {gap:.2e} of the threshold"
        assert got.score == pytest.approx(expected.score, rel=TOLERANCE)
        assert got.anomalous == expected.anomalous
        assert len(got.regions) == len(expected.regions)
        largest = max(largest, gap)
    return largest


def sizes_across_the_tile(rng: np.random.Generator, tile: int, smallest: int, count: int) -> list[tuple[int, int]]:
    """Random (height, width) below, at and above the tile side, odd and even, and some
    near the smallest side the graph scores."""
    sides = [smallest, smallest + 1, tile - 1, tile, tile + 1, 2 * tile + 1]
    sides += rng.integers(smallest, 3 * tile, size=count).tolist()
    return [(int(rng.choice(sides)), int(rng.choice(sides))) for _ in range(count)]


def with_tiles(detector, exported: OnnxDetector, tile_size: int) -> None:
    """Both runtimes tiling at `tile_size` (the graph does not depend on it: tiling.py)."""
    detector.config.data.tile_size = tile_size
    exported.tile_rule = detector.tile_rule


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_model_scores_like_the_checkpoint(variant, tmp_path, rng):
    data = make_mvtec(tmp_path / "data", rng)
    checkpoint = train_tiny(data, tmp_path / "model.pt", *VARIANTS[variant])
    detector = load_checkpoint(checkpoint)
    exported = OnnxDetector(export(detector, tmp_path / "model.onnx"))
    assert exported.threshold == pytest.approx(detector.threshold)
    assert exported.pixel_threshold == pytest.approx(detector.pixel_threshold)
    arrays = fresh_images(rng)
    arrays += [read_image(path) for path in sorted((data / "test").glob("*/*.png"))]
    # training images: patches on bank codes (distance 0: the blend's epsilon must survive export)
    arrays += [read_image(path) for path in sorted((data / "train" / "good").glob("*.png"))[:2]]
    assert_same_results(detector, exported, arrays)
    with_tiles(detector, exported, 48)
    smallest = exported.min_side
    arrays = []
    for number, (height, width) in enumerate(sizes_across_the_tile(rng, 48, smallest, 6)):
        arrays.append(rng.random((height, width, 3 if number % 2 else 1), dtype=np.float32))
    assert_same_results(detector, exported, arrays)


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory, tiny_trained):
    root = tmp_path_factory.mktemp("exported")
    checkpoint, data = tiny_trained
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(root / "model.onnx"), "--quiet"])
    assert result.exit_code == 0, result.output
    return data, checkpoint, root / "model.onnx"


def test_detect_with_an_exported_model_writes_what_the_checkpoint_writes(exported_model, tmp_path):
    data, checkpoint, model = exported_model
    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(data / "test" / "good" / "tiny.png")
    (data / "test" / "good" / "broken.png").write_bytes(b"not an image")
    try:
        outputs = {}
        for name, path in (("onnx", model), ("checkpoint", checkpoint)):
            result = runner.invoke(app, ["detect", str(path), str(data / "test"), "--out", str(tmp_path / name), "-q"])
            assert result.exit_code == 3, result.output  # the two bad images fail, the rest are scored
            assert "broken.png" in result.output and "tiny.png" in result.output
            outputs[name] = (tmp_path / name / "scores.csv").read_text().splitlines()
    finally:
        (data / "test" / "good" / "tiny.png").unlink()
        (data / "test" / "good" / "broken.png").unlink()
    assert len(outputs["onnx"]) == len(outputs["checkpoint"]) == 5
    for got, expected in zip(outputs["onnx"][1:], outputs["checkpoint"][1:], strict=True):
        got, expected = got.split(","), expected.split(",")
        assert got[0] == expected[0] and got[3:] == expected[3:]  # image, decision, output files
        assert float(got[2]) == pytest.approx(float(expected[2]), abs=TOLERANCE)
    regions = [(tmp_path / name / "regions.csv").read_text().count("\n") for name in ("onnx", "checkpoint")]
    assert regions[0] == regions[1]


def test_parity_at_random_sizes_across_the_tile_boundary(exported_model, rng):
    """One graph, tiles of 64, 48 and the default 1024 px (the tile rule is outside the graph,
    tiling.py): random sizes below, at and above a tile, odd and even, gray and RGB."""
    _, checkpoint, model = exported_model
    detector, exported = load_checkpoint(checkpoint), OnnxDetector(model)
    largest = 0.0
    for tile in (64, 48):
        with_tiles(detector, exported, tile)
        sizes = sizes_across_the_tile(rng, tile, exported.min_side, 8)
        arrays = [rng.random((h, w, 3 if i % 2 else 1), dtype=np.float32) for i, (h, w) in enumerate(sizes)]
        largest = max(largest, assert_same_results(detector, exported, arrays))
    with_tiles(detector, exported, 1024)
    largest = max(largest, assert_same_results(detector, exported, [rng.random((1030, 461, 1), dtype=np.float32)]))
    print(f"largest map difference / threshold: {largest:.2e}")


def test_tiled_detect_writes_what_the_checkpoint_writes(exported_model, tmp_path, rng):
    _, checkpoint, model = exported_model
    detector = load_checkpoint(checkpoint)
    image = tmp_path / "wide.png"
    Image.fromarray((rng.random((131, 1173, 3)) * 255).astype(np.uint8)).save(image)
    rows = {}
    for name, path in (("onnx", model), ("checkpoint", checkpoint)):
        extra = ["--threshold", str(detector.threshold)]
        result = runner.invoke(app, ["detect", str(path), str(image), "--out", str(tmp_path / name), "-q", *extra])
        assert result.exit_code == 0, result.output
        rows[name] = (tmp_path / name / "scores.csv").read_text().splitlines()[1].split(",")
    assert rows["onnx"][3:] == rows["checkpoint"][3:]
    assert float(rows["onnx"][2]) == pytest.approx(float(rows["checkpoint"][2]), abs=TOLERANCE)


def test_export_refuses_models_it_cannot_express(tmp_path, rng):
    data = make_mvtec(tmp_path / "data", rng)
    checkpoint = train_tiny(data, tmp_path / "image.pt", "--set", "model.background=image")
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert "cannot export this model exactly: model.background is 'image'" in result.output
    assert not (tmp_path / "m.onnx").exists()
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "m.pt"), "--format", "torchscript"])
    assert result.exit_code == 1 and "--format torchscript: expected onnx" in result.output


def test_missing_onnx_packages_give_one_line(exported_model, tmp_path, monkeypatch):
    _, checkpoint, model = exported_model
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert result.output.strip() == "error: exporting needs the onnx package: pip install 'lista-cli[onnx]'"
    result = runner.invoke(app, ["detect", str(model), str(SAMPLE / "test"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "needs onnxruntime: pip install 'lista-cli[onnx]'" in result.output
    assert "Traceback" not in result.output


def test_bad_onnx_files_are_refused(tmp_path):
    (tmp_path / "text.onnx").write_text("not a model")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    (tmp_path / "other.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    expected = {"text.onnx": "not a readable ONNX model", "other.onnx": "not one written by lista export"}
    for name, message in expected.items():
        result = runner.invoke(
            app, ["detect", str(tmp_path / name), str(SAMPLE / "test"), "--out", str(tmp_path / "o")]
        )
        assert result.exit_code == 1 and message in result.output and name in result.output, result.output


BLOCKER = """
import importlib.abc, json, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "typer", "rich", "yaml", "jinja2", "matplotlib", "scipy", "sklearn"}:
            raise ImportError(f"{name} is not available here")
sys.meta_path.insert(0, Blocked())
from lista_cli.io.imageio import ImageError, read_image
from lista_cli.detection.export.onnx_model import OnnxDetector
result = OnnxDetector(sys.argv[1]).detect_batch([read_image(sys.argv[2])])[0]
print(json.dumps({"score": result.score, "anomalous": result.anomalous, "modules": sorted(sys.modules)}))
"""


def test_an_exported_model_scores_with_onnxruntime_numpy_and_pillow_only(exported_model):
    """What a production PC needs: the runner imports no torch (nor any other lista
    dependency); an import hook makes every such import fail."""
    data, checkpoint, model = exported_model
    image = sorted((data / "test" / "spot").glob("*.png"))[0]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER, str(model), str(image)], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert not {"torch", "typer", "rich", "yaml"} & {m.split(".")[0] for m in got["modules"]}
    expected = load_checkpoint(checkpoint).detect_batch([read_image(image)])[0]
    assert got["score"] == pytest.approx(expected.score, rel=TOLERANCE)
    assert got["anomalous"] == expected.anomalous


def test_exported_file_carries_its_metadata(exported_model):
    _, checkpoint, model = exported_model
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    detector = load_checkpoint(checkpoint)
    assert meta["format"] == "lista-onnx 3"
    assert float(meta["threshold"]) == pytest.approx(detector.threshold)
    assert json.loads(meta["config"])["patch"]["size"] == detector.config.patch.size
    onnx.checker.check_model(onnx.load(str(model)), full_check=True)


def test_the_smallest_image_the_graph_scores(exported_model, rng):
    """Scales 1, 1/2 and 1/4 with p px patches: 4 (p - 1) + 1 px is the least side whose
    coarsest scale holds a patch, and the reflected Gaussian borders need more than the
    widest radius, ceil(3 sigma); below the larger of the two the graph refuses."""
    _, checkpoint, model = exported_model
    detector, exported = load_checkpoint(checkpoint), OnnxDetector(model)
    assert detector.working_scale == 1.0 and detector.config.data.scales == [1, 2, 4]
    score = detector.config.score
    radius = math.ceil(3 * max(score.smooth_sigma, score.code_smooth_sigma))
    side = max(4 * (detector.config.patch.size - 1) + 1, radius + 1)
    assert exported.min_side == side
    smallest = rng.random((side, 41, 3), dtype=np.float32)
    exported.check_size(smallest, "smallest.png")
    assert_same_results(detector, exported, [smallest])
    with pytest.raises(ImageError, match=f"smaller.png: image is 41x{side - 1} px.*at least {side} px"):
        exported.check_size(smallest[1:], "smaller.png")


def test_commands_that_need_the_checkpoint_say_so_for_an_onnx_file(exported_model, tmp_path):
    data, _, model = exported_model
    for command in (["eval", str(model), str(data)], ["export", str(model), "--out", str(tmp_path / "again.onnx")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, result.output
        assert f"{model}: an exported ONNX model; only lista detect runs those" in result.output
