"""The working resolution: which image size the models see, set by a rule on the normal images.

With `data.image_size: auto` every image is scaled by one factor, so texture keeps one
physical scale across images of different sizes (crops of a part, strips, photos): the
factor brings the images' median shorter side down to SIDE px (never up), and a typical
image's area to at most MAX_AREA model px (bounds time and memory on long strips). The
rule replaced a search among candidate sizes on synthetic validation defects, which picked
sizes that real defects punished on textures outside the dev sets (docs/accuracy.md).
A number fixes the shorter side of each image; null keeps each image's own size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDE = 256  # median shorter side (px) at the working size
MAX_AREA = 1024 * 1024  # model px of a typical image (a 4096 x 256 strip keeps its size)


@dataclass(frozen=True)
class WorkingSize:
    """Either a factor applied to every image (auto) or the config's fixed shorter side."""

    factor: float | None = None
    image_size: int | None = None
    side: int | None = None  # auto: the images' median shorter side at this size

    @property
    def label(self) -> str:
        if self.factor is not None:
            return f"{self.side} px (x{self.factor:.3g})"
        return "native" if self.image_size is None else f"{self.image_size} px"


def typical_shape(shapes: list[tuple[int, int]]) -> tuple[float, float]:
    """Median shorter side and median aspect ratio (longer / shorter) of the images."""
    shorter = np.median([min(h, w) for h, w in shapes])
    aspect = np.median([max(h, w) / min(h, w) for h, w in shapes])
    return float(shorter), float(aspect)


def working_size(shapes: list[tuple[int, int]], image_size: int | str | None) -> WorkingSize:
    """The working size of a training folder whose images have these (h, w) shapes."""
    if image_size != "auto":
        return WorkingSize(None, image_size)  # type: ignore[arg-type]
    shorter, aspect = typical_shape(shapes)
    side = min(shorter, SIDE, (MAX_AREA / aspect) ** 0.5)
    return WorkingSize(min(1.0, side / shorter), side=round(side))
