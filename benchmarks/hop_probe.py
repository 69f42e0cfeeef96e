"""Probe, not the product: cascaded Saab hops scored by a bank of normal codes, per hop.

Each hop: every k x k neighbourhood of the previous hop's maps (reflect-padded, stride 1),
a DC kernel (the neighbourhood mean) and the leading principal directions of the mean-removed
neighbourhoods of the training images (`keep` kernels in all), the responses' absolute values,
2 x 2 max-pooling (after Kuo et al.'s Saab transform and AnomalyHop). Hops (5, 8), (3, 16),
(3, 24): 1/2, 1/4 and 1/8 resolution, receptive fields of about 6, 14 and 30 px. Each hop's
per-pixel feature vectors get lista's own k-centre bank of 2048 normal codes (PCA keeping
97 % of the energy, at most 32 directions); the map is the distance to the nearest code,
upsampled, Gaussian-smoothed (sigma 4 px), and its maximum is the image score. The training
images are read at lista's working size.

    python benchmarks/hop_probe.py ../shared/data/brick ../shared/data/bsdata/ballscrew
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lista_cli.config import load_config
from lista_cli.detection.evaluation.metrics import roc_auc
from lista_cli.detection.model.typicality import CodeBank
from lista_cli.detection.scoring import pixel_maps
from lista_cli.detection.scoring.postprocess import prepare, resize
from lista_cli.detection.training.training_data import load_training_images
from lista_cli.io.dataset import test_images
from lista_cli.io.imageio import read_image

HOPS = ((5, 8), (3, 16), (3, 24))  # (kernel side, kernels kept)
MAX_ROWS = 100_000
PIXELS_PER_IMAGE = 4000  # sampled per test image for the pixel AUROC


def neighbourhoods(maps: torch.Tensor, k: int) -> torch.Tensor:
    """(1, C, h, w) -> (h*w, C*k*k) reflect-padded k x k neighbourhoods."""
    r = k // 2
    columns = F.unfold(F.pad(maps, (r, r, r, r), mode="reflect"), k)
    return columns[0].T


def fit_hop(maps: list[torch.Tensor], k: int, keep: int, seed: int) -> torch.Tensor:
    """(keep, C, k, k) kernels: the DC kernel and the leading PCA directions of the AC part."""
    rows = torch.cat([neighbourhoods(m, k) for m in maps])
    if len(rows) > MAX_ROWS:
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:MAX_ROWS]]
    rows = rows.double()
    n = rows.shape[1]
    dc = torch.full((n,), n**-0.5, dtype=torch.float64)
    ac = rows - (rows @ dc)[:, None] * dc[None]
    ac = ac - ac.mean(0)
    _, vectors = torch.linalg.eigh(ac.T @ ac / len(ac))
    kernels = torch.cat([dc[:, None], vectors.flip(1)[:, : keep - 1]], 1).T
    return kernels.float().view(keep, maps[0].shape[1], k, k)


def apply_hop(maps: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    r = kernels.shape[-1] // 2
    responses = F.conv2d(F.pad(maps, (r, r, r, r), mode="reflect"), kernels).abs()
    return F.max_pool2d(responses, 2, ceil_mode=True)


def fit_bank(features: list[torch.Tensor]) -> tuple[CodeBank, torch.Tensor]:
    rows = torch.cat([f[0].reshape(f.shape[1], -1).T for f in features])
    if len(rows) > 2 * MAX_ROWS:
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))[: 2 * MAX_ROWS]]
    mean = rows.mean(0)
    centred = rows - mean
    values, vectors = torch.linalg.eigh((centred.T @ centred).double() / len(centred))
    values, vectors = values.flip(0), vectors.flip(1)
    rank = min(int((torch.cumsum(values, 0) / values.sum() < 0.97).sum()) + 1, 32)
    basis = vectors[:, :rank].float()
    return CodeBank.from_codes(basis, centred @ basis, 2048), mean


def probe(folder: Path) -> str:
    loaded = load_training_images(folder, load_config(None, []), lambda message: None)
    started = time.perf_counter()
    hops, banks, current = [], [], [t[None] for t in loaded.tensors]
    for number, (k, keep) in enumerate(HOPS):
        kernels = fit_hop(current, k, keep, number)
        current = [apply_hop(m, kernels) for m in current]
        hops.append(kernels)
        banks.append(fit_bank(current))
    fit_seconds = time.perf_counter() - started
    rng = np.random.default_rng(0)
    labels, scores = [], [[] for _ in HOPS]
    pixels = [([], []) for _ in HOPS]
    for item in test_images(folder):
        array = read_image(item.path)
        size = array.shape[:2]
        image = torch.from_numpy(prepare(array, loaded.channels, None, loaded.size.factor))[None]
        truth = item.mask(size) if item.mask_path else np.zeros(size, bool)
        labels.append(item.is_anomalous)
        current = image
        for number, (kernels, (bank, mean)) in enumerate(zip(hops, banks, strict=True)):
            current = apply_hop(current, kernels)
            rows = current[0].reshape(current.shape[1], -1).T
            distances = bank.match(bank.codes_of(rows - mean)).distances.view(1, 1, *current.shape[-2:])
            fine = F.interpolate(distances, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0]
            score_map = resize(pixel_maps.gaussian_smooth(fine, 4.0)[0].numpy(), size)
            scores[number].append(float(score_map.max()))
            pick = rng.choice(score_map.size, size=min(score_map.size, PIXELS_PER_IMAGE), replace=False)
            pixels[number][0].append(score_map.reshape(-1)[pick])
            pixels[number][1].append(truth.reshape(-1)[pick])
    cells = []
    for number in range(len(HOPS)):
        pixel = roc_auc(np.concatenate(pixels[number][1]), np.concatenate(pixels[number][0]))
        cells.append(f"{pixel:.3f} / {roc_auc(np.array(labels), np.array(scores[number])):.3f}")
    return f"| {folder.name} | " + " | ".join(cells) + f" | {fit_seconds:.0f} |"


def main() -> None:
    torch.set_num_threads(1)
    print("| set | hop 1 (1/2) | hop 2 (1/4) | hop 3 (1/8) | fit s |")
    print("|---|---|---|---|---|")
    for folder in sys.argv[1:]:
        print(probe(Path(folder)), flush=True)


if __name__ == "__main__":
    main()
