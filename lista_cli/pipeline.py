"""The one code path from image to anomaly map, shared by train, detect and eval."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import patches, scoring
from .config import Config
from .imageio import ImageError, resized_shape, to_channels
from .model import UnfoldedISTA


class Result(NamedTuple):
    """Detection result of one image; `anomaly_map` has the input's own height and width."""

    score: float
    normalized_score: float
    anomalous: bool
    anomaly_map: np.ndarray  # (H, W) float32


def to_tensor(array: np.ndarray, channels: int, image_size: int | None) -> torch.Tensor:
    """(H, W, C) float array -> (channels, h, w) tensor at the model's resolution."""
    tensor = torch.from_numpy(np.ascontiguousarray(to_channels(array, channels))).permute(2, 0, 1)
    height, width = tensor.shape[-2:]
    target = resized_shape(height, width, image_size)
    if target != (height, width):
        tensor = F.interpolate(tensor[None], size=target, mode="bilinear", antialias=True, align_corners=False)[0]
    return tensor.clamp(0, 1)


@dataclass
class Detector:
    """A model with the settings that turn its sparse output into maps and decisions."""

    model: UnfoldedISTA
    config: Config
    channels: int
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.model.mean.device

    def prepare(self, array: np.ndarray) -> torch.Tensor:
        """(H, W, C) image in [0, 1] -> (channels, h, w) tensor as the model sees it."""
        return to_tensor(array, self.channels, self.config.data.image_size)

    def check_size(self, array: np.ndarray, path: object) -> None:
        """Raise ImageError if the image, at model resolution, is smaller than one patch."""
        height, width = resized_shape(array.shape[0], array.shape[1], self.config.data.image_size)
        if min(height, width) < self.config.patch.size:
            raise ImageError(
                f"{path}: image is {array.shape[1]}x{array.shape[0]} px, smaller than one"
                f" {self.config.patch.size}x{self.config.patch.size} patch at model resolution"
            )

    def sparse(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> sparse part S_K of every patch, (B, N, C*p*p)."""
        cfg = self.config.patch
        return self.model(patches.unfold(images, cfg.size, cfg.stride))

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) images -> (B, h, w) smoothed anomaly maps."""
        cfg = self.config
        sparse = self.sparse(images.to(self.device))
        raw = scoring.sparse_to_map(sparse, images.shape[-2:], self.channels, cfg.patch.size, cfg.patch.stride)
        return scoring.gaussian_smooth(raw, cfg.score.smooth_sigma)

    def image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        return scoring.image_scores(maps, self.config.score.image_score, self.config.score.top_k)

    @property
    def threshold(self) -> float:
        return float(self.calibration.get("threshold", float("inf")))

    @torch.inference_mode()
    def detect_batch(self, arrays: list[np.ndarray]) -> list[Result]:
        """Score images of any sizes; those with the same model-side size run as one batch."""
        results: list[Result | None] = [None] * len(arrays)
        prepared = [self.prepare(a) for a in arrays]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, tensor in enumerate(prepared):
            groups.setdefault(tuple(tensor.shape[-2:]), []).append(index)
        for indices in groups.values():
            maps = self.anomaly_maps(torch.stack([prepared[i] for i in indices]))
            scores = self.image_scores(maps)
            for row, index in enumerate(indices):
                height, width = arrays[index].shape[:2]
                full = maps[row]
                if full.shape != (height, width):
                    full = F.interpolate(full[None, None], size=(height, width), mode="bilinear", align_corners=False)[
                        0, 0
                    ]
                score = float(scores[row])
                normalized = score / self.threshold
                results[index] = Result(score, normalized, normalized >= 1.0, full.float().cpu().numpy())
        return results  # type: ignore[return-value]
