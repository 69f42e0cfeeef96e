"""The one code path from image to anomaly map, shared by train, detect and eval."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ...config import Config
from ...io.imageio import ImageError, working_shape
from ..model import patches
from ..model.model import UnfoldedISTA
from ..model.typicality import CodeBank, log_residual
from . import pixel_maps
from .inference import DetectorForward
from .postprocess import Finish, image_score, prepare
from .regions import Result, decide
from .resampling import downsample, upsample
from .state import Calibration, Scale
from .tiling import TileRule


class Detector(nn.Module):
    """Models (one per image scale) with the settings that turn their output into maps and
    decisions. Everything it learned is its state_dict: each scale's layers, mean, subspace
    and code bank, and as extra state the scale factors, channels, working
    size factor and calibration; with the config that rebuilds its shapes (`from_state`), it
    is the whole checkpoint."""

    def __init__(
        self,
        scales: list[Scale],
        config: Config,
        channels: int,
        calibration: Calibration | None = None,
        working_scale: float | None = None,  # model pixels per input pixel (data.image_size: auto)
    ) -> None:
        super().__init__()
        self.scales = nn.ModuleList(scales)
        self.config = config
        self.channels = channels
        self.calibration = Calibration() if calibration is None else calibration
        self.working_scale = working_scale

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "factors": [int(scale.factor) for scale in self.scales],
            "channels": self.channels,
            "working_scale": self.working_scale,
            "calibration": self.calibration.to_dict(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if [int(f) for f in state["factors"]] != [int(scale.factor) for scale in self.scales]:
            raise RuntimeError(f"scale factors {state['factors']} do not match the detector's")
        self.channels = int(state["channels"])
        scale = state["working_scale"]
        self.working_scale = None if scale is None else float(scale)
        self.calibration = Calibration.from_dict(state["calibration"])

    @classmethod
    def from_state(cls, config: Config, state: dict[str, Any]) -> Detector:
        """The detector a state_dict holds (its shapes read from the state), loaded with it."""

        def bank(prefix: str) -> CodeBank | None:
            if f"{prefix}codes" not in state:
                return None
            parts = ("basis", "codes", "radii", "residual_levels", "sparse_divisors")
            return CodeBank(*(state[f"{prefix}{part}"] for part in parts))

        scales = []
        for index, factor in enumerate(state["_extra_state"]["factors"]):
            prefix = f"scales.{index}."
            model = UnfoldedISTA(state[f"{prefix}model.mean"], state[f"{prefix}model.basis"], config.model)
            scales.append(Scale(int(factor), model.requires_grad_(False), bank(f"{prefix}bank.")))
        detector = cls(scales, config, int(state["_extra_state"]["channels"]))
        detector.load_state_dict(state)
        return detector.eval()

    @property
    def kinds(self) -> list[str]:
        """The kind of each component map, in order: per scale "sparse" (and with a code bank
        "code" and "residual")."""
        return [kind for scale in self.scales for kind in scale.kinds]

    @property
    def model(self) -> UnfoldedISTA:
        """The finest scale's model (the only one with data.scales = [1])."""
        return self.scales[0].model

    @property
    def device(self) -> torch.device:
        return self.model.mean.device

    def prepare(self, array: np.ndarray) -> torch.Tensor:
        """(H, W, C) image in [0, 1] -> (channels, h, w) tensor as the model sees it."""
        return torch.from_numpy(prepare(array, self.channels, self._size, self.working_scale))

    @property
    def _size(self) -> int | None:
        size = self.config.data.image_size
        return size if isinstance(size, int) else None

    def working_shape(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) the model sees of an (height, width) input image."""
        return working_shape(height, width, self._size, self.working_scale)

    def check_size(self, array: np.ndarray, path: object) -> None:
        """Raise ImageError if the image, at model resolution, is smaller than one patch."""
        height, width = self.working_shape(array.shape[0], array.shape[1])
        if min(height, width) < self.config.patch.size:
            raise ImageError(
                f"{path}: image is {array.shape[1]}x{array.shape[0]} px, smaller than one"
                f" {self.config.patch.size}x{self.config.patch.size} patch at model resolution"
            )

    def scale_components(self, scale: Scale, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(1, C, h, w) image at this scale's resolution -> (1, M, h, w) unsmoothed maps:
        ||s|| folded to pixels (with a code bank, divided by the sparse divisor of each patch's
        nearest normal codes) and, with a code bank, the distance of each patch's code to the
        nearest normal code and how far its residual level is from that code's. `noise`
        (1, 1, 1) overrides the model's per-image noise scale."""
        p, stride = self.config.patch.size, self.config.patch.stride
        size = image.shape[-2:]
        if min(size) < p:  # a coarse scale of a small image has no patch: it adds nothing
            return image.new_zeros(1, len(scale.kinds), *size)
        rows = patches.unfold(image, p, stride)
        sparse = scale.model(rows, noise)
        bank = scale.bank
        if bank is None:
            return pixel_maps.sparse_to_map(sparse, size, self.channels, p, stride)[:, None]
        centred = rows[0] - scale.model.mean
        codes = bank.codes_of(centred)  # (N, R)
        match = bank.match(codes)
        divisors = None if match.sparse_divisors is None else match.sparse_divisors[None]
        components = [
            pixel_maps.sparse_to_map(sparse, size, self.channels, p, stride, divisors),
            pixel_maps.patch_values_to_map(match.distances[None], size, p, stride),
        ]
        if match.residual_levels is not None:
            deviations = (log_residual(centred, scale.model.basis) - match.residual_levels).abs()
            components.append(pixel_maps.patch_values_to_map(deviations[None], size, p, stride))
        return torch.stack(components, dim=1)

    def component_maps(self, images: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, C, h, w) images -> (B, M, h, w) unsmoothed component maps of every scale, coarse
        ones upsampled. `noise`: one (B, 1, 1) noise scale per image scale, or None."""
        size = images.shape[-2:]
        maps = []
        # One image at a time: matrix-product blocking then never depends on the batch, so a
        # map is bit-identical whatever batch or shard the image came in.
        for index in range(images.shape[0]):
            image = images[index : index + 1].to(self.device)
            parts = []
            for number, scale in enumerate(self.scales):
                level = None if noise is None else noise[number][index : index + 1]
                coarse = self.scale_components(scale, downsample(image, scale.factor), level)
                parts.append(upsample(coarse, scale.factor, size))
            maps.append(torch.cat(parts, dim=1))
        return torch.cat(maps)

    def without_image(self, image: int) -> Detector:
        """This detector with every code bank lacking the codes of training image `image`."""
        scales = [Scale(s.factor, s.model, None if s.bank is None else s.bank.without(image)) for s in self.scales]
        return Detector(scales, self.config, self.channels, self.calibration, self.working_scale)

    @property
    def map_weights(self) -> list[float]:
        """Weights of the component maps: 1 / (their high quantile on held-out normal images),
        times the mix chosen in training (mixing.share_weights)."""
        return self.calibration.map_weights or [1.0] * len(self.kinds)

    def combine(
        self, components: torch.Tensor, weights: list[float] | None = None, sparse_smoothing: str | None = None
    ) -> torch.Tensor:
        """(B, M, h, w) component maps -> (B, h, w) smoothed anomaly map (weighted sum);
        `weights` and `sparse_smoothing` default to the calibrated ones."""
        weights = self.map_weights if weights is None else weights
        smoothing = self.calibration.sparse_smoothing if sparse_smoothing is None else sparse_smoothing
        score = self.config.score
        return pixel_maps.smooth_mix(
            components, weights, self.kinds, score.smooth_sigma, smoothing, score.code_smooth_sigma
        )

    @property
    def smoothing_reach(self) -> int:
        """How far (px at model resolution) smoothing carries a pixel's value."""
        reach = math.ceil(3 * max(self.config.score.smooth_sigma, self.config.score.code_smooth_sigma))
        if self.calibration.sparse_smoothing == "oriented":
            reach = max(reach, pixel_maps.line_reach())
        return reach

    def anomaly_maps(self, images: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, C, h, w) images -> (B, h, w) smoothed anomaly maps (`noise`: see component_maps).
        Smoothed one image at a time, so a map never depends on the batch it came in."""
        components = self.component_maps(images, noise)
        return torch.cat([self.combine(components[i : i + 1]) for i in range(len(components))])

    @property
    def tile_rule(self) -> TileRule:
        """When and how images are scored in tiles (tiling.py), the same for both runtimes."""
        cfg = self.config
        factors = [int(s.factor) for s in self.scales]
        return TileRule.of(cfg.patch.size, cfg.patch.stride, factors, cfg.data.tile_size, self.smoothing_reach)

    @property
    def finish(self) -> Finish:
        """Working-size map -> map at the input's size and image score (postprocess.py)."""
        c, score = self.calibration, self.config.score
        return Finish(
            list(c.edge_rows), list(c.edge_columns), c.level_reference, c.level_cap, score.image_score, score.top_k
        )

    @torch.inference_mode()
    def working_map(self, image: torch.Tensor) -> np.ndarray:
        """(C, h, w) working-size image -> (h, w) undamped anomaly map, through the forward
        pass `lista export` traces (inference.py), in tiles when it is larger than one."""
        forward = DetectorForward(self)
        image = image[None].to(self.device)

        def score(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return forward(image, image[..., y0:y1, x0:x1]).float().cpu().numpy()

        return self.tile_rule.apply(score, *image.shape[-2:])

    def score_image(self, image: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, float]:
        """(C, h, w) working-size image -> ((H, W) map at the input's size `size`, image
        score): what detect decides on, and what calibration fits the thresholds on."""
        return self.finish(self.working_map(image), size)

    @property
    def threshold(self) -> float:
        """Image threshold: an image is anomalous when its score reaches it."""
        return float(self.calibration.threshold)

    @property
    def pixel_threshold(self) -> float:
        """Mask threshold: in an anomalous image, the pixels whose map value reaches it
        (at most the image threshold; before calibration, the image threshold)."""
        level = self.calibration.pixel_threshold
        return self.threshold if level is None else min(float(level), self.threshold)

    def decide(self, anomaly_map: np.ndarray, min_region: int | None = None) -> Result:
        """The result of one (H, W) map at the input's own size (regions.decide), with at
        least `min_region` (default `score.min_region`) px per region."""
        score = image_score(anomaly_map, self.config.score.image_score, self.config.score.top_k)
        smallest = self.config.score.min_region if min_region is None else min_region
        return decide(anomaly_map, score, self.threshold, self.pixel_threshold, smallest)

    def override_threshold(self, threshold: float) -> None:
        """Use this image threshold instead of the calibrated one (for this run)."""
        self.calibration.threshold = threshold

    def detect_batch(self, arrays: list[np.ndarray]) -> list[Result]:
        """The result of each (H, W, C) image. Each runs through the model alone, so its map
        never depends on the batch or shard it came in."""
        results = []
        for array in arrays:
            anomaly_map, score = self.score_image(self.prepare(array), array.shape[:2])
            results.append(
                decide(anomaly_map, score, self.threshold, self.pixel_threshold, self.config.score.min_region)
            )
        return results
