"""The normal training images: found under a folder, read, and brought to a working size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..errors import ListaError
from ..io.imageio import ImageError, read_image
from ..io.inputs import collect_inputs
from .resampling import to_tensor
from .working_size import WorkingSize


class TrainError(ListaError):
    """Training cannot start on this data (exit code 1)."""


def training_folder(data_dir: Path) -> Path:
    """An MVTec category folder trains on its train/good; any other folder on itself."""
    good = Path(data_dir) / "train" / "good"
    return good if good.is_dir() else Path(data_dir)


def training_images(data_dir: Path) -> list:
    """The image files training would read, or TrainError (no such folder, no images): a
    check cheap enough to run before any progress is drawn."""
    folder = training_folder(data_dir)
    if not folder.is_dir():
        raise TrainError(f"{data_dir}: no such folder")
    found = collect_inputs([str(folder)])
    if found.problems:
        raise TrainError(found.problems[0][1])
    return found.images


def load_training_arrays(
    data_dir: Path, config: Config, warn: Callable[[str], None]
) -> tuple[list[np.ndarray], int, list[str]]:
    """Read every image under the folder at its own size; unreadable ones are skipped."""
    folder = training_folder(data_dir)
    arrays, skipped = [], []
    for item in training_images(data_dir):
        try:
            arrays.append(read_image(item.path))
        except ImageError as exc:
            warn(f"skipped {exc}")
            skipped.append(str(item.path))
    if len(arrays) < 2:
        raise TrainError(f"{folder}: need at least 2 readable normal images, found {len(arrays)}")
    mode = config.data.channels
    if mode == "auto":
        colour = any(a.shape[-1] == 3 and not (np.ptp(a, axis=-1) < 1e-6).all() for a in arrays)
        channels = 3 if colour else 1
    else:
        channels = 3 if mode == "rgb" else 1
    return arrays, channels, skipped


def at_size(arrays: list[np.ndarray], channels: int, size: WorkingSize, patch: int, folder: Path) -> list[torch.Tensor]:
    """The images as (C, h, w) tensors at a working size; an image smaller than a patch is an error."""
    tensors = [to_tensor(a, channels, size.image_size, size.factor) for a in arrays]
    smallest = min(min(t.shape[-2:]) for t in tensors)
    if smallest < patch:
        raise TrainError(f"{folder}: an image is {smallest} px on a side, smaller than the patch size {patch}")
    return tensors
