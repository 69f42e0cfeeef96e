"""The validation set: held-out normal images with seeded synthetic defects of many families.

Training chooses on it each scale's kept step and the mix of the component maps. Its images
are crops of the held-out images at the working size (the model's resolution).

The criterion is the mean over defect families of the pixel AUROC of that family's pixels
against all normal pixels, so thin cracks weigh as much as large stains (a pooled AUROC is
ruled by the largest defects). AUROCs use a fixed seeded sample of pixels.

The mask level is fitted elsewhere (`mask_examples`): on the same kind of defects drawn into
the held-out image files at their input size, scored as `lista detect` scores a file, so the
level is set on the maps it is applied to."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...config import Config
from ...io.imageio import read_image, to_channels
from .cutpaste import cutpaste
from .defects import FAMILIES, drawn_defect

MAX_VALIDATION_AREA = 320 * 320  # px of one validation image at the reference size
MAX_MASK_INPUT_AREA = 2048 * 2048  # input px of one image the mask level is fitted on
MAX_VALIDATION_IMAGES = 12  # held-out images that get defects (all of them are calibrated on)
NEGATIVE_SAMPLE = 100_000  # normal pixels in the AUROC sample
POSITIVE_SAMPLE = 20_000  # defect pixels per family in the AUROC sample


def families(config: Config) -> list[str]:
    """Validation defect families of the config's `train.validation_defects`."""
    kind = config.train.validation_defects
    if kind == "all":
        return [*FAMILIES, "cutpaste"]
    if kind == "both":
        return ["drawn", "cutpaste"]
    return [kind]


def _bounded(height: int, width: int, area: float) -> tuple[int, int]:
    """The (height, width) of a centre crop with at most `area` px: the longer side cut
    first, then both (validation runs many times)."""
    if height * width > area:
        if height >= width:
            height = max(width, int(area // width))
        else:
            width = max(height, int(area // height))
        if height * width > area:
            side = math.isqrt(int(area))
            height, width = min(height, side), min(width, side)
    return height, width


def _centre_crop(image, height: int, width: int):
    """The centre (height, width) of a (..., H, W) tensor or of an (H, W, C) array."""
    if isinstance(image, np.ndarray):
        top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
        return image[top : top + height, left : left + width]
    top, left = (image.shape[-2] - height) // 2, (image.shape[-1] - width) // 2
    return image[..., top : top + height, left : left + width]


def _common_size(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Images -> centre crops of the common smallest height and width, cut further to at
    most MAX_VALIDATION_AREA px."""
    height = min(t.shape[-2] for t in images)
    width = min(t.shape[-1] for t in images)
    height, width = _bounded(height, width, MAX_VALIDATION_AREA)
    return [_centre_crop(t, height, width) for t in images]


@dataclass
class ValidationSet:
    images: torch.Tensor  # (n, C, H, W) at the reference resolution
    masks: torch.Tensor  # (n, H, W) bool
    family: list[str | None]  # defect family of each image, None for a clean one
    negatives: torch.Tensor  # flat pixel indices of the normal-pixel sample
    positives: dict[str, torch.Tensor]  # flat pixel indices of each family's sample

    @property
    def clean(self) -> list[int]:
        return [i for i, f in enumerate(self.family) if f is None]

    def resized(self, shape: tuple[int, int]) -> torch.Tensor:
        """The images at a model's working shape (h, w)."""
        if tuple(self.images.shape[-2:]) == tuple(shape):
            return self.images
        return F.interpolate(self.images, size=shape, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)

    def sample(self, maps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(n, h, w) maps at any resolution -> their values at the sampled normal pixels and at
        each family's sampled defect pixels, the maps resized to the reference resolution."""
        if tuple(maps.shape[-2:]) != tuple(self.images.shape[-2:]):
            maps = F.interpolate(maps[:, None], size=self.images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        flat = maps.reshape(-1).float().cpu()
        return flat[self.negatives], {name: flat[index] for name, index in self.positives.items()}

    def sample_weights(self) -> tuple[float, dict[str, float]]:
        """How many pixels of the whole set each sampled normal / family pixel stands for."""
        normal = float((~self.masks).sum()) / max(len(self.negatives), 1)
        per_family = {}
        for name, index in self.positives.items():
            chosen = torch.tensor([f == name for f in self.family])
            per_family[name] = float(self.masks[chosen].sum()) / max(len(index), 1)
        return normal, per_family

    def score(self, maps: torch.Tensor) -> tuple[float, dict[str, float]]:
        """(n, h, w) anomaly maps at any resolution -> (mean over families of the pixel
        AUROC, AUROC per family), the maps resized to the reference resolution first.
        Maps with NaN or infinite values (diverged layers) score 0."""
        return self.score_sample(*self.sample(maps))

    def score_sample(
        self, negatives: torch.Tensor, positives: dict[str, torch.Tensor]
    ) -> tuple[float, dict[str, float]]:
        """`score` from the sampled map values (`sample`'s output)."""
        if not (negatives.isfinite().all() and all(v.isfinite().all() for v in positives.values())):
            return 0.0, dict.fromkeys(positives, 0.0)
        # numpy's sort (vectorised quicksort) takes 0.4 ms for 100 000 float32 where torch's took
        # 13 ms here, and this runs for every candidate mix; the same sorted values either way.
        normal = torch.from_numpy(np.sort(negatives.numpy()))
        per_family = {}
        for name, values in positives.items():
            below = torch.searchsorted(normal, values, side="left")
            not_above = torch.searchsorted(normal, values, side="right")
            per_family[name] = float(((below + not_above).double() / 2).mean() / len(normal))
        return float(np.mean(list(per_family.values()))), per_family


def _defect(image: torch.Tensor, name: str, rng: torch.Generator, config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) image -> (it with one defect of family `name`, the defect's (H, W) mask)."""
    if name == "cutpaste":
        return cutpaste(image, rng, config.cutpaste)
    return drawn_defect(image, rng, None if name == "drawn" else name)


def make_validation_set(images: list[torch.Tensor], config: Config, seed: int, copies: int = 3) -> ValidationSet:
    """Held-out normal images (at most MAX_VALIDATION_IMAGES), each clean and with `copies`
    seeded synthetic defects; the families take turns so each appears about equally often."""
    rng = torch.Generator().manual_seed(seed + 7919)
    images = _common_size(images[:MAX_VALIDATION_IMAGES])
    names = families(config)
    val_images, val_masks, family = [], [], []
    turn = 0
    for image in images:
        val_images.append(image)
        val_masks.append(torch.zeros(image.shape[-2:], dtype=torch.bool))
        family.append(None)
        for _ in range(copies):
            name = names[turn % len(names)]
            turn += 1
            augmented, mask = _defect(image, name, rng, config)
            if not mask.any():
                continue
            val_images.append(augmented)
            val_masks.append(mask)
            family.append(name)
    return sampled(torch.stack(val_images), torch.stack(val_masks), family, seed)


def sampled(images: torch.Tensor, masks: torch.Tensor, family: list[str | None], seed: int) -> ValidationSet:
    """A validation set of (n, C, H, W) images and (n, H, W) masks with its seeded pixel sample:
    NEGATIVE_SAMPLE normal pixels and up to POSITIVE_SAMPLE defect pixels per family."""
    flat = masks.reshape(-1)
    sample = torch.Generator().manual_seed(seed + 15485863)
    normal_index = (~flat).nonzero()[:, 0]
    negatives = normal_index[torch.randperm(len(normal_index), generator=sample)[:NEGATIVE_SAMPLE]]
    positives = {}
    for name in dict.fromkeys(f for f in family if f is not None):
        chosen = torch.zeros(len(family), dtype=torch.bool)
        chosen[[i for i, f in enumerate(family) if f == name]] = True
        index = (masks & chosen[:, None, None]).reshape(-1).nonzero()[:, 0]
        positives[name] = index[torch.randperm(len(index), generator=sample)[:POSITIVE_SAMPLE]]
    return ValidationSet(images, masks, family, negatives, positives)


def as_8_bit(array: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> the same rounded to 8 bits, as read_image returns such a file."""
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8).astype(np.float32) / 255.0


def mask_examples(
    paths: list[Path],
    channels: int,
    working_shape: Callable[[int, int], tuple[int, int]],
    config: Config,
    seed: int,
    copies: int = 3,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The images the mask level is fitted on, as `lista detect` would get them: held-out
    normal image files (at most MAX_VALIDATION_IMAGES) at their input size, each a centre
    crop whose working size (`working_shape` of an input (h, w)) is at most
    MAX_VALIDATION_AREA px and whose input at most MAX_MASK_INPUT_AREA, clean and with
    `copies` seeded synthetic defects drawn at the input size; yields ((H, W, channels)
    8-bit-valued image, (H, W) bool defect mask), one file read at a time."""
    rng = torch.Generator().manual_seed(seed + 7919)
    names = families(config)
    turn = 0
    for path in paths[:MAX_VALIDATION_IMAGES]:
        array = to_channels(read_image(path), channels)
        height, width = array.shape[:2]
        model_px = math.prod(working_shape(height, width))
        area = min(MAX_VALIDATION_AREA * height * width / model_px, MAX_MASK_INPUT_AREA)
        array = np.ascontiguousarray(_centre_crop(array, *_bounded(height, width, area)))
        yield as_8_bit(array), np.zeros(array.shape[:2], dtype=bool)
        image = torch.from_numpy(np.moveaxis(array, -1, 0).copy())
        for _ in range(copies):
            name = names[turn % len(names)]
            turn += 1
            augmented, mask = _defect(image, name, rng, config)
            if mask.any():
                yield as_8_bit(np.moveaxis(augmented.numpy(), 0, -1)), mask.numpy()
