"""`lista export` and exported models: the ONNX graph scores like the checkpoint it came from.

The reference is the PyTorch Detector (`detect_batch`), an independent code path: the graph
is written operator by operator (interpolation matrices, one-hot convolutions for patches,
transposed convolutions for folding, TopK for the median), not traced from it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.io.imageio import ImageError, read_image

from .conftest import REPO, SAMPLE, make_mvtec, train_tiny

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lista_cli.detection.checkpoint import load_checkpoint  # noqa: E402
from lista_cli.detection.export import export  # noqa: E402
from lista_cli.detection.onnx_model import OnnxDetector  # noqa: E402

runner = CliRunner()
TOLERANCE = 1e-4  # on maps divided by the image threshold (1.0 = the threshold)

VARIANTS = {
    "default": [],
    "gray, resized, two scales": ["--set", "data.channels=gray", "--set", "data.image_size=30"],
    "three scales, full layers, FISTA, top-k": [
        "--set",
        "data.scales=[1,2,3]",
        "--set",
        "model.layer_type=full",
        "--set",
        "model.fista=true",
        "--set",
        "score.image_score=topk",
    ],
    "oriented smoothing of S": ["--set", "score.sparse_smoothing=oriented"],
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


def assert_same_results(detector, exported: OnnxDetector, arrays: list[np.ndarray]) -> None:
    for array, expected, got in zip(arrays, detector.detect_batch(arrays), exported.detect_batch(arrays), strict=True):
        assert got.anomaly_map.shape == array.shape[:2]
        gap = np.abs(got.anomaly_map - expected.anomaly_map).max() / detector.threshold
        assert gap <= TOLERANCE, f"{array.shape}: maps differ by {gap:.2e} of the threshold"
        assert got.score == pytest.approx(expected.score, rel=TOLERANCE)
        assert got.anomalous == expected.anomalous
        assert len(got.regions) == len(expected.regions)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_model_scores_like_the_checkpoint(variant, tmp_path, rng):
    data = make_mvtec(tmp_path / "data", rng)
    checkpoint = train_tiny(data, tmp_path / "model.pt", *VARIANTS[variant])
    detector = load_checkpoint(checkpoint)
    if detector.scales[0].bank is not None:  # trained sparse divisors, some above 1: the graph applies them
        assert all(len(s.bank.sparse_divisors) == len(s.bank.codes) for s in detector.scales)
    exported = OnnxDetector(export(detector, tmp_path / "model.onnx"))
    assert exported.threshold == pytest.approx(detector.threshold)
    assert exported.pixel_threshold == pytest.approx(detector.pixel_threshold)
    arrays = fresh_images(rng)
    arrays += [read_image(path) for path in sorted((data / "test").glob("*/*.png"))]
    assert_same_results(detector, exported, arrays)


def test_exported_model_with_an_automatic_working_size_below_one(tmp_path, rng):
    """Images of 150 x 170 px may be scored at 128 px: the graph resizes with PyTorch's
    antialiased weights (ONNX's own antialiased Resize differs by up to 0.05)."""
    data = make_mvtec(tmp_path / "data", rng, size=(150, 170), n_train=4)
    detector = load_checkpoint(train_tiny(data, tmp_path / "model.pt", "--set", "data.image_size=128"))
    exported = OnnxDetector(export(detector, tmp_path / "model.onnx"))
    arrays = [rng.random((151, 199, 3), dtype=np.float32), rng.random((203, 161, 1), dtype=np.float32)]
    assert_same_results(detector, exported, arrays + fresh_images(rng))
    detector.config.data.image_size = "auto"
    detector.working_scale = 0.7519  # as training picks it: one factor for every image
    exported = OnnxDetector(export(detector, tmp_path / "scaled.onnx"))
    assert_same_results(detector, exported, arrays)
    detector.config.data.tile_size = 64  # tiles of the resized image, resized back after stitching
    assert_same_results(detector, OnnxDetector(export(detector, tmp_path / "tiles.onnx")), arrays)
    detector.calibration.sparse_smoothing = "oriented"  # its wider reach in the runner's tile margin
    assert_same_results(detector, OnnxDetector(export(detector, tmp_path / "oriented.onnx")), arrays)
    # every patch's S divided by a divisor of its nearest codes (sparse_levels.py), far from 1
    gen = torch.Generator().manual_seed(3)
    for scale in detector.scales:
        scale.bank.sparse_divisors = 1 + 3 * torch.rand(len(scale.bank.codes), generator=gen)
    assert_same_results(detector, OnnxDetector(export(detector, tmp_path / "divisors.onnx")), arrays)
    # every map damped by its own level (levels.py), one of them at the cap: in the graph and
    # in the runner's tiling loop
    plain = detector.detect_batch(arrays)
    medians = sorted(float(np.median(result.anomaly_map)) for result in plain)
    detector.calibration.level_reference, detector.calibration.level_cap = medians[0] / 1.2, medians[1] / medians[0]
    for tile in (64, 1024):
        detector.config.data.tile_size = tile
        damped = detector.detect_batch(arrays)
        assert all(d.score < p.score / 1.1 for d, p in zip(damped, plain, strict=True))
        assert_same_results(detector, OnnxDetector(export(detector, tmp_path / f"levels{tile}.onnx")), arrays)


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


def test_images_larger_than_a_tile_are_tiled_as_the_checkpoint_tiles_them(exported_model, tmp_path, rng):
    """data.tile_size 64: the runner asks the graph for the working-size image and its noise
    scales, scores each tile through the graph and stitches, damps, resizes back and scores
    as Detector.detect_batch does; and a 1100 x 1043 image at the default tile size, whose
    noise comes from a sparser patch grid (step 8 instead of the stride 4)."""
    _, checkpoint, _ = exported_model
    detector = load_checkpoint(checkpoint)
    big = rng.random((1100, 1043, 1), dtype=np.float32)
    assert_same_results(detector, OnnxDetector(export(detector, tmp_path / "default.onnx")), [big])
    detector.config.data.tile_size = 64
    exported = OnnxDetector(export(detector, tmp_path / "tiled.onnx"))
    arrays = [rng.random((131, 173, 3), dtype=np.float32), rng.random((97, 211, 1), dtype=np.float32)]
    real = read_image(sorted((SAMPLE / "test").glob("*/*.png"))[0])
    assert_same_results(detector, exported, [*arrays, real[:, 3:]])
    image = tmp_path / "wide.png"
    Image.fromarray((arrays[0] * 255).astype(np.uint8)).save(image)
    rows = {}
    for name, path in (("onnx", tmp_path / "tiled.onnx"), ("checkpoint", checkpoint)):
        extra = ["--threshold", str(detector.threshold)]
        result = runner.invoke(app, ["detect", str(path), str(image), "--out", str(tmp_path / name), "-q", *extra])
        assert result.exit_code == 0, result.output
        rows[name] = (tmp_path / name / "scores.csv").read_text().splitlines()[1].split(",")
    assert rows["onnx"][3:] == rows["checkpoint"][3:]


def test_export_refuses_models_it_cannot_express(tmp_path, rng):
    data = make_mvtec(tmp_path / "data", rng)
    checkpoint = train_tiny(data, tmp_path / "context.pt", "--set", "score.context=true")
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert "cannot export this model exactly: score.context" in result.output
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
from lista_cli.detection.onnx_model import OnnxDetector
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
    assert meta["format"] == "lista-onnx 2"
    assert float(meta["threshold"]) == pytest.approx(detector.threshold)
    assert json.loads(meta["config"])["patch"]["size"] == detector.config.patch.size
    onnx.checker.check_model(onnx.load(str(model)), full_check=True)


def test_the_smallest_image_the_graph_scores(exported_model, rng):
    """Scales 1 and 1/2 with p px patches: 2p - 1 px is the least side whose coarse scale
    holds a patch (one px less the checkpoint scores that scale as nothing), and the graph's
    reflected Gaussian borders need more than the widest radius, ceil(3 sigma); below the
    larger of the two the graph refuses."""
    _, checkpoint, model = exported_model
    detector, exported = load_checkpoint(checkpoint), OnnxDetector(model)
    assert detector.working_scale == 1.0 and detector.config.data.scales == [1, 2]
    score = detector.config.score
    radius = math.ceil(3 * max(score.smooth_sigma, score.code_smooth_sigma))
    side = max(2 * detector.config.patch.size - 1, radius + 1)
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


RAW_RUNTIME = """
import json, sys
import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
image = np.asarray(Image.open(sys.argv[2]).convert("RGB"), dtype=np.float32) / 255
outputs = ["anomaly_map", "score", "image_threshold", "pixel_threshold"]
anomaly_map, score, image_threshold, pixel_threshold = session.run(outputs, {"image": image})
anomalous = bool(score >= image_threshold and (anomaly_map >= pixel_threshold).any())
print(json.dumps({"score": float(score), "anomalous": anomalous, "lista": "lista_cli" in sys.modules}))
"""


def test_the_readme_snippet_scores_without_lista_installed(exported_model):
    """README's production snippet: onnxruntime, numpy and pillow only, lista_cli not even
    importable (isolated mode, run from another folder)."""
    data, checkpoint, model = exported_model
    image = sorted((data / "test" / "spot").glob("*.png"))[0]
    done = subprocess.run(
        [sys.executable, "-I", "-c", RAW_RUNTIME, str(model), str(image)],
        capture_output=True,
        text=True,
        cwd=model.parent,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    expected = load_checkpoint(checkpoint).detect_batch([read_image(image)])[0]
    assert got["score"] == pytest.approx(expected.score, rel=TOLERANCE)
    assert got["anomalous"] == expected.anomalous and not got["lista"]
