"""What a detector holds besides its config: what training measured (Calibration) and the
model of each image scale (Scale)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from ..model.model import UnfoldedISTA
from ..model.typicality import CodeBank


@dataclass
class Calibration:
    """What training measured to turn maps into decisions (all in the checkpoint)."""

    map_weights: list[float] | None = None  # one per component map; None (untrained): 1 each
    threshold: float = math.inf  # image threshold on the map's maximum
    pixel_threshold: float | None = None  # mask threshold; None (untrained): the image threshold
    edge_rows: list[float] = field(default_factory=list)  # damping by distance to the top/bottom edge
    edge_columns: list[float] = field(default_factory=list)  # ... and to the left/right edge
    image_scores: list[float] = field(default_factory=list)  # the normal scores the threshold came from
    level_reference: float | None = None  # 0.9 quantile of normal maps' levels (levels.py); None: none
    level_cap: float = 1.0  # the largest level / reference among normal maps
    sparse_smoothing: str = "gaussian"  # how the sparse-part maps are smoothed (pixel_maps.smooth_mix)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Calibration:
        """From a checkpoint's dict; keys it does not know are ignored, missing ones take their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scale(nn.Module):
    """One image scale: the model and code bank that score images downsampled by `factor`
    (bank None: the sparse part only)."""

    def __init__(self, factor: int, model: UnfoldedISTA | None, bank: CodeBank | None = None) -> None:
        super().__init__()
        self.factor = factor
        self.model = model
        self.bank = bank

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of this scale's component maps, in order."""
        if self.bank is None:
            return ("sparse",)
        return ("sparse", "code", "residual") if self.bank.has_residual else ("sparse", "code")
