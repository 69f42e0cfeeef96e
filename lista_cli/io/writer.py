"""Per-image outputs of detect: heatmap overlay PNG, binary mask PNG, raw map .npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .imageio import save_npy, save_png

# Anchor colours of a perceptually ordered map (black -> purple -> red -> yellow -> white).
_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
).astype(np.uint8)  # (256, 3)


def colourise(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 colours; the threshold sits at the middle of the scale."""
    level = np.clip(anomaly_map / (2.0 * threshold), 0.0, 1.0)
    return _LUT[(level * 255).astype(np.uint8)]


OUTLINE = np.array([0, 255, 255], dtype=np.uint8)  # cyan: apart from every colour of the map


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> the mask's pixels that have a 4-neighbour outside it (or the image edge)."""
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def heatmap_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, threshold: float, mask: np.ndarray | None = None, rows: int = 512
) -> np.ndarray:
    """Blend the colourised map over the (H, W, C) image in [0, 1] -> (H, W, 3) uint8, with
    the outline of each region of `mask` drawn in cyan.

    Done in bands of `rows` rows, so a huge image needs little memory beyond the output."""
    out = np.empty(anomaly_map.shape + (3,), dtype=np.uint8)
    for top in range(0, anomaly_map.shape[0], rows):
        band = image[top : top + rows].astype(np.float32)
        if band.shape[-1] != 3:
            band = np.repeat(band, 3, axis=-1)
        colours = colourise(anomaly_map[top : top + rows], threshold)
        out[top : top + rows] = np.clip(127.5 * band + 0.5 * colours, 0, 255).astype(np.uint8)
    if mask is not None and mask.any():
        out[outline(mask)] = OUTLINE
    return out


def output_paths(out_dir: Path, relative_stem: str) -> dict[str, Path]:
    base = Path(out_dir) / relative_stem
    return {
        "heatmap": base.with_name(base.name + "_heatmap.png"),
        "mask": base.with_name(base.name + "_mask.png"),
        "map": base.with_name(base.name + "_map.npy"),
    }


def write_outputs(
    paths: dict[str, Path], image: np.ndarray, anomaly_map: np.ndarray, threshold: float, mask: np.ndarray
) -> None:
    """Write the three files, each atomically; the raw map last, as the mark of completion."""
    save_png(paths["heatmap"], heatmap_overlay(image, anomaly_map, threshold, mask))
    save_png(paths["mask"], np.where(mask, 255, 0).astype(np.uint8))
    save_npy(paths["map"], anomaly_map.astype(np.float32))
