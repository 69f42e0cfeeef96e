"""Shared fixtures: a seeded rng and a tiny synthetic dataset in the MVTec folder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "paper_BRG01"


RNG_SEED = 20261123


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def texture(rng: np.random.Generator, height: int, width: int, colour: bool = True) -> np.ndarray:
    """A noisy periodic texture, uint8 (H, W, 3) or (H, W)."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = 0.5 + 0.15 * np.sin(xs / 3.0) * np.cos(ys / 4.0)
    image = np.clip(base + 0.03 * rng.standard_normal((height, width)), 0, 1)
    if colour:
        image = np.stack([image, 0.9 * image, 0.8 * image], axis=-1)
    return (image * 255).astype(np.uint8)


def make_mvtec(root: Path, rng: np.random.Generator, size: tuple[int, int] = (37, 45), n_train: int = 8) -> Path:
    """train/good, test/good, test/spot with ground_truth/spot/<stem>_mask.png."""
    height, width = size
    for folder in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(texture(rng, height, width)).save(root / "train/good" / f"{i:03d}.png")
    for i in range(2):
        Image.fromarray(texture(rng, height, width)).save(root / "test/good" / f"g{i}.png")
    for i in range(2):
        image = texture(rng, height, width)
        mask = np.zeros((height, width), dtype=np.uint8)
        top, left = 8 + 5 * i, 10 + 7 * i
        image[top : top + 6, left : left + 5] = (20, 200, 30)
        mask[top : top + 6, left : left + 5] = 255
        Image.fromarray(image).save(root / "test/spot" / f"s{i}.png")
        Image.fromarray(mask).save(root / "ground_truth/spot" / f"s{i}_mask.png")
    return root


@pytest.fixture
def mvtec(tmp_path: Path, rng: np.random.Generator) -> Path:
    return make_mvtec(tmp_path / "data", rng)


FAST_TRAIN = ["--set", "train.steps=3", "--set", "train.val_every=1", "--set", "train.batch=2", "--quiet"]


def train_tiny(data: Path, out: Path, *extra: str) -> Path:
    """Train a model for a few steps through the real CLI; fail the test if it does not exit 0."""
    from typer.testing import CliRunner

    from lista_cli.cli import app

    result = CliRunner().invoke(app, ["train", str(data), "--out", str(out), *FAST_TRAIN, *extra])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> tuple[Path, Path]:
    """(model, its MVTec folder): one tiny model trained once for every module that only
    reads it (its data must be left as found)."""
    root = tmp_path_factory.mktemp("tiny_trained")
    data = make_mvtec(root / "data", np.random.default_rng(RNG_SEED + 1))
    return train_tiny(data, root / "model.pt"), data


def csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV file the tool wrote, as dicts."""
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def exited_cleanly(result, code: int) -> str:
    """Assert the exit code, and no traceback or internal error on the way; -> stderr."""
    assert result.exit_code == code, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    return result.stderr
