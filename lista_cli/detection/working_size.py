"""The working resolution: which image size the models see, chosen per texture.

A fixed 128 px loses a metal mesh's 1-2 px wires and a commutator's thin cracks, while a
coarse texture gains nothing from more pixels but cost. With `data.image_size: auto`,
training compares a few candidate sizes on the validation set (untrained models, defects
drawn at the largest candidate, so thin ones stay thin there) and keeps the best; the
smaller wins near-ties, since it is faster. Every image is scaled by the same factor, so
texture keeps one physical scale across images of different sizes (crops of a part).
A number fixes the shorter side as before; null keeps each image's own size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDES = (128, 256, 512)  # candidate shorter sides (px) below the images' own
MAX_AREA = 512 * 512  # model px of a typical image at any candidate (bounds time and memory)
TIE = 0.003  # a larger size must beat a smaller one by more than this validation score


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


def candidates(shapes: list[tuple[int, int]], image_size: int | str | None, patch: int) -> list[WorkingSize]:
    """Working sizes to compare, smallest first: one when the config fixes it; for auto, the
    images' own size and the SIDES below it (never upsampled), within MAX_AREA."""
    if image_size != "auto":
        return [WorkingSize(None, image_size)]  # type: ignore[arg-type]
    shorter, aspect = typical_shape(shapes)
    largest = min(shorter, (MAX_AREA / aspect) ** 0.5)
    sides = sorted({side for side in SIDES if side < largest} | {largest})
    sides = [side for side in sides if side >= 4 * patch] or [largest]
    return [WorkingSize(min(1.0, side / shorter), side=round(side)) for side in sides]
