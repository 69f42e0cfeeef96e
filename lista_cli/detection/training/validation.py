"""The validation set: held-out normal images with seeded synthetic defects of many families.

Training chooses on it the working image size, each scale's kept step and the mix of the
component maps. Its images stay at the *reference* resolution (the largest working size
considered), so models at different sizes are compared on the same pixels: each scores
the images resized to its own size and its maps are resized back. A candidate size that
loses thin defects is then seen to lose them.

The criterion is the mean over defect families of the pixel AUROC of that family's pixels
against all normal pixels, so thin cracks weigh as much as large stains (a pooled AUROC is
ruled by the largest defects). AUROCs use a fixed seeded sample of pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...config import Config
from .cutpaste import cutpaste
from .defects import FAMILIES, drawn_defect

MAX_VALIDATION_AREA = 320 * 320  # px of one validation image at the reference size
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


def _common_size(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Images -> centre crops of the common smallest height and width, the longer side cut
    further so a crop has at most MAX_VALIDATION_AREA px (validation runs many times)."""
    height = min(t.shape[-2] for t in images)
    width = min(t.shape[-1] for t in images)
    if height * width > MAX_VALIDATION_AREA:  # the longer side first, then both
        if height >= width:
            height = max(width, MAX_VALIDATION_AREA // width)
        else:
            width = max(height, MAX_VALIDATION_AREA // height)
        if height * width > MAX_VALIDATION_AREA:
            side = math.isqrt(MAX_VALIDATION_AREA)
            height, width = min(height, side), min(width, side)
    out = []
    for t in images:
        top, left = (t.shape[-2] - height) // 2, (t.shape[-1] - width) // 2
        out.append(t[:, top : top + height, left : left + width])
    return out


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
        normal = negatives.sort().values
        per_family = {}
        for name, values in positives.items():
            below = torch.searchsorted(normal, values, side="left")
            not_above = torch.searchsorted(normal, values, side="right")
            per_family[name] = float(((below + not_above).double() / 2).mean() / len(normal))
        return float(np.mean(list(per_family.values()))), per_family


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
            if name == "cutpaste":
                augmented, mask = cutpaste(image, rng, config.cutpaste)
            else:
                augmented, mask = drawn_defect(image, rng, None if name == "drawn" else name)
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
