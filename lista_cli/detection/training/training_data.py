"""The normal training images: found under a folder, read one at a time and brought to the
working size as they are read (a folder of large photos never sits in memory at full size)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...config import Config
from ...errors import ListaError
from ...io.imageio import ImageError, read_image, working_shape
from ...io.inputs import collect_inputs
from ..scoring.resampling import to_tensor
from .working_size import WorkingSize, working_size

MIN_IMAGES = 2  # training needs at least this many usable normal images


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


@dataclass
class TrainingImages:
    """The usable normal images of a folder at the working size."""

    tensors: list[torch.Tensor]  # (C, h, w) each, at the working size
    paths: list[Path]  # the file of each tensor
    channels: int
    size: WorkingSize
    skipped: list[str] = field(default_factory=list)  # files left out, each with a warning
    input_sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) of each file as read


def _header_shape(path: Path) -> tuple[int, int] | None:
    """(height, width) from the file's header, without decoding it; None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                width, height = image.size
        return height, width
    except Exception:  # noqa: BLE001 - read_image names the problem when the file is decoded
        return None


def _has_colour(array: np.ndarray) -> bool:
    return array.shape[-1] == 3 and not (np.ptp(array, axis=-1) < 1e-6).all()


def load_training_images(data_dir: Path, config: Config, warn: Callable[[str], None]) -> TrainingImages:
    """Read the folder's images at the working size (working_size.py, from the headers'
    shapes). Unreadable images and images smaller than one patch at their own or at the
    working size (detect refuses both) are skipped with a warning naming them; TrainError if
    fewer than MIN_IMAGES remain."""
    folder = training_folder(data_dir)
    patch = config.patch.size
    items = training_images(data_dir)
    shapes = [_header_shape(item.path) for item in items]
    size = working_size([s for s in shapes if s is not None] or [(patch, patch)], config.data.image_size)
    fixed = None if config.data.channels == "auto" else (3 if config.data.channels == "rgb" else 1)
    tensors, paths, colours, skipped, sizes = [], [], [], [], []
    for item in items:
        try:
            array = read_image(item.path)
        except ImageError as exc:
            warn(f"skipped {exc}")
            skipped.append(str(item.path))
            continue
        height, width = working_shape(array.shape[0], array.shape[1], size.image_size, size.factor)
        if min(array.shape[:2]) < patch or min(height, width) < patch:  # as detect refuses it
            where = "" if (height, width) == array.shape[:2] else f", {width}x{height} at the working size"
            warn(
                f"skipped {item.path}: image is {array.shape[1]}x{array.shape[0]} px{where},"
                f" smaller than one {patch}x{patch} patch"
            )
            skipped.append(str(item.path))
            continue
        colour = _has_colour(array)
        own = fixed or (3 if colour else 1)  # channels before the folder's are known
        tensors.append(to_tensor(array, own, size.image_size, size.factor))
        paths.append(item.path)
        colours.append(colour)
        sizes.append(array.shape[:2])
    if len(tensors) < MIN_IMAGES:
        raise TrainError(f"{folder}: need at least {MIN_IMAGES} usable normal images, found {len(tensors)}")
    channels = fixed or (3 if any(colours) else 1)
    for index, tensor in enumerate(tensors):
        if tensor.shape[0] != channels:  # gray tensor, colour folder: repeating commutes with the resize
            tensors[index] = tensor.expand(channels, -1, -1).contiguous()
    return TrainingImages(tensors, paths, channels, size, skipped, sizes)
