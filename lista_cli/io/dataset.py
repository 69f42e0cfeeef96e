"""MVTec-style category folders: train/good, test/<kind>/, ground_truth/<kind>/<stem>_mask.png."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ListaError
from .imageio import IMAGE_EXTENSIONS, read_image


class DatasetError(ListaError):
    """A dataset folder that does not follow the MVTec layout (exit code 1)."""


@dataclass(frozen=True)
class TestImage:
    path: Path
    kind: str  # 'good' or a defect kind
    mask_path: Path | None  # None for good images

    @property
    def is_anomalous(self) -> bool:
        return self.kind != "good"

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """(H, W) bool ground truth; all False for good images."""
        if self.mask_path is None:
            return np.zeros(shape, dtype=bool)
        mask = read_image(self.mask_path)[..., 0] > 0.5
        if mask.shape != shape:
            raise DatasetError(
                f"{self.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}"
            )
        return mask


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def test_images(root: Path) -> list[TestImage]:
    """Every test image of an MVTec category folder with its mask; a missing mask is an error."""
    root = Path(root)
    test = root / "test"
    if not test.is_dir():
        raise DatasetError(
            f"{root}: no test/ folder (expected MVTec layout: train/good, test/<kind>, ground_truth/<kind>)"
        )
    items = []
    for kind_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        for path in _images_in(kind_dir):
            if kind_dir.name == "good":
                items.append(TestImage(path, "good", None))
                continue
            mask = root / "ground_truth" / kind_dir.name / f"{path.stem}_mask.png"
            if not mask.is_file():
                raise DatasetError(f"{path}: its ground-truth mask {mask} is missing")
            items.append(TestImage(path, kind_dir.name, mask))
    if not items:
        raise DatasetError(f"{test}: no test images")
    return items
