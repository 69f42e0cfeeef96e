"""Training on normal images only: PCA init, CutPaste-supervised unfolding, calibration."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import patches
from .checkpoint import save_checkpoint
from .config import Config
from .cutpaste import cutpaste
from .defects import drawn_defect
from .errors import ListaError
from .imageio import ImageError, read_image
from .inputs import collect_inputs
from .metrics import roc_auc
from .model import PrincipalAxes, build_model
from .pipeline import Detector, Scale, downsample, to_tensor
from .scoring import calibrate
from .typicality import MAX_CODE_RANK, CodeBank

MAX_PCA_ROWS = 200_000
MAX_BANK_CANDIDATES = 200_000  # patches whose codes the bank's coreset is chosen from
BANK_BAND_PATCHES = 65536  # patches unfolded at once while building a bank
SPARSE_SHARES = (0.5, 0.25, 0.75, 0.1, 0.9, 0.0, 1.0)  # candidate mixes; the first wins ties


class TrainError(ListaError):
    """Training cannot start on this data (exit code 1)."""


@dataclass
class TrainSummary:
    images: int
    held_out: int
    channels: int
    steps: int  # per scale
    scales: list[dict]  # a ScaleSummary per image scale, as a dict
    threshold: float
    seconds: float
    sparse_share: float = 1.0  # weight of the sparse-part maps against the code maps
    val_auroc: float = 0.0  # validation pixel AUROC of the combined map
    skipped: list[str] = field(default_factory=list)


def training_folder(data_dir: Path) -> Path:
    """An MVTec category folder trains on its train/good; any other folder on itself."""
    good = Path(data_dir) / "train" / "good"
    return good if good.is_dir() else Path(data_dir)


def load_training_images(
    data_dir: Path, config: Config, warn: Callable[[str], None]
) -> tuple[list[torch.Tensor], int, list[str]]:
    """Read every image under the folder at model resolution; unreadable ones are skipped."""
    folder = training_folder(data_dir)
    if not folder.is_dir():
        raise TrainError(f"{data_dir}: no such folder")
    found = collect_inputs([str(folder)])
    if found.problems:
        raise TrainError(found.problems[0][1])
    inputs = found.images
    arrays, skipped = [], []
    for item in inputs:
        try:
            arrays.append(read_image(item.path))
        except ImageError as exc:
            warn(f"skipped {exc}")
            skipped.append(str(item.path))
    if len(arrays) < 2:
        raise TrainError(f"{folder}: need at least 2 readable normal images, found {len(arrays)}")
    mode = config.data.channels
    if mode == "auto":
        colour = any(a.shape[-1] == 3 and not (np.ptp(a, axis=-1) < 1e-6).all() for a in arrays)
        channels = 3 if colour else 1
    else:
        channels = 3 if mode == "rgb" else 1
    tensors = [to_tensor(a, channels, config.data.image_size) for a in arrays]
    smallest = min(min(t.shape[-2:]) for t in tensors)
    if smallest < config.patch.size:
        raise TrainError(
            f"{folder}: an image is {smallest} px on a side, smaller than the patch size {config.patch.size}"
        )
    return tensors, channels, skipped


def _random_crops(images: list[torch.Tensor], count: int, size: int, rng: torch.Generator) -> torch.Tensor:
    """(count, C, size, size) random crops with random horizontal and vertical flips."""
    crops = []
    for _ in range(count):
        image = images[int(torch.randint(len(images), (), generator=rng))]
        height, width = image.shape[-2:]
        side = min(size, height, width)
        top = int(torch.randint(height - side + 1, (), generator=rng))
        left = int(torch.randint(width - side + 1, (), generator=rng))
        crop = image[:, top : top + side, left : left + side]
        if torch.rand((), generator=rng) < 0.5:
            crop = crop.flip(-1)
        if torch.rand((), generator=rng) < 0.5:
            crop = crop.flip(-2)
        crops.append(crop)
    return torch.stack(crops)


def _pick_rows(weights: torch.Tensor, count: int, rng: torch.Generator) -> torch.Tensor:
    """(B, N) sampling weights -> (B, count) row indices drawn without replacement."""
    count = min(count, weights.shape[1])
    return torch.multinomial(weights, count, replacement=False, generator=rng)


def _gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return rows.gather(1, index[..., None].expand(-1, -1, rows.shape[-1]))


def _sparse_at(model, rows: torch.Tensor, pick: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The model's sparse part at the picked rows. A global background treats rows one by
    one, so only the picked rows run; an image background needs every row of the crop."""
    if model.background == "global":
        return model(_gather(rows, pick), scale=scale)
    return _gather(model(rows, scale=scale), pick)


def validation_set(
    images: list[torch.Tensor], config: Config, seed: int, copies: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out normal images, each clean and with `copies` seeded synthetic defects:
    drawn scratches and stains (a different kind from the CutPaste the model trains on, so
    keeping the best step does not only reward fitting CutPaste), CutPaste, or both."""
    rng = torch.Generator().manual_seed(seed + 7919)
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:  # differing sizes: validate on common-size centre crops
        side = min(min(t.shape[-2:]) for t in images)
        images = [t[:, :side, :side] for t in images]
    val_images, val_masks = [], []
    for image in images:
        val_images.append(image)
        val_masks.append(torch.zeros(image.shape[-2:], dtype=torch.bool))
        for copy_index in range(copies):
            kind = config.train.validation_defects
            if kind == "both":
                kind = "drawn" if copy_index % 2 == 0 else "cutpaste"
            if kind == "drawn":
                augmented, mask = drawn_defect(image, rng)
            else:
                augmented, mask = cutpaste(image, rng, config.cutpaste)
            val_images.append(augmented)
            val_masks.append(mask)
    return torch.stack(val_images), torch.stack(val_masks)


@torch.inference_mode()
def _components_in_batches(detector: Detector, images: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """Unsmoothed component maps (M, h, w) of each image, one image at a time."""
    return [detector.component_maps(image[None])[0] for image in images]


def map_weights(normal_components: list[torch.Tensor], quantile: float = 0.99) -> list[float]:
    """1 / (the `quantile` of each component over held-out normal pixels): the components
    then share one unit, "how far above normal", and are summed."""
    pixels = torch.cat([c.flatten(1) for c in normal_components], dim=1)  # (M, pixels)
    if pixels.shape[1] > 1_000_000:
        pixels = pixels[:, :: -(-pixels.shape[1] // 1_000_000)]
    levels = torch.quantile(pixels.double(), quantile, dim=1)
    return [1.0 / max(float(level), 1e-6) for level in levels]


def share_weights(detector: Detector, levels: list[float], share: float) -> list[float]:
    """Map weights: each component's level, times `share` for sparse-part maps and
    1 - share for code maps (the components come per scale as [sparse, code])."""
    kinds = [kind for scale in detector.scales for kind in ("sparse", "code")[: scale.components]]
    return [level * (share if kind == "sparse" else 1.0 - share) for level, kind in zip(levels, kinds, strict=True)]


def choose_weights(
    detector: Detector, components: list[torch.Tensor], masks: torch.Tensor
) -> tuple[list[float], float, float]:
    """(weights, sparse share, validation pixel AUROC) of the best mix of the validation
    components. Which map carries a texture's defects differs: S on paper, the code
    distance on periodic brick, so the share is chosen here unless score.sparse_share is set."""
    clean = [c for c, m in zip(components, masks, strict=True) if not m.any()]
    levels = map_weights(clean)
    fixed = detector.config.score.sparse_share
    if fixed is not None:
        shares = [fixed]
    elif any(scale.bank is not None for scale in detector.scales):
        shares = SPARSE_SHARES
    else:
        shares = [1.0]
    best: tuple[list[float], float, float] | None = None
    for share in shares:
        weights = share_weights(detector, levels, share)
        maps = torch.cat([detector.combine(c[None], weights) for c in components])
        auroc = roc_auc(masks.numpy(), maps.cpu().numpy())
        if best is None or auroc > best[2]:
            best = (weights, share, auroc)
    return best  # type: ignore[return-value]


def validation_auroc(detector: Detector, images: torch.Tensor, masks: torch.Tensor) -> float:
    """Pixel AUROC on the validation set, with its best mix of the component maps."""
    return choose_weights(detector, _components_in_batches(detector, images), masks)[2]


@torch.inference_mode()
def build_bank(mean: torch.Tensor, basis: torch.Tensor, images: list[torch.Tensor], config: Config) -> CodeBank:
    """A coreset of at most bank_size codes of normal training patches x - mu, taken at every
    pixel offset; past MAX_BANK_CANDIDATES patches, a seeded random share of each image's."""
    p = config.patch.size
    total = sum((t.shape[-2] - p + 1) * (t.shape[-1] - p + 1) for t in images)
    share = min(1.0, MAX_BANK_CANDIDATES / total)
    rng = torch.Generator().manual_seed(config.train.seed + 104729)
    codes = []
    for image in images:
        height, width = image.shape[-2:]
        band = max(1, BANK_BAND_PATCHES // (width - p + 1))  # patch rows per band: bounded memory
        for top in range(0, height - p + 1, band):
            rows = patches.unfold(image[None, :, top : top + band + p - 1], p, 1)[0]
            if share < 1.0:
                rows = rows[torch.randperm(len(rows), generator=rng)[: max(1, round(share * len(rows)))]]
            codes.append((rows - mean) @ basis)
    return CodeBank.from_codes(basis, torch.cat(codes), config.score.bank_size)


@dataclass
class ScaleSummary:
    factor: int
    rank: int
    best_step: int
    val_auroc_start: float
    val_auroc_best: float


def train_scale(
    fitting: list[torch.Tensor],
    held_out: list[torch.Tensor],
    config: Config,
    factor: int,
    channels: int,
    on_step: Callable[[int, float, float | None], None] | None = None,
) -> tuple[Scale, ScaleSummary]:
    """PCA, code bank and CutPaste-supervised unfolding of one image scale.

    The model trains on the images downsampled by `factor`; validation scores the full-size
    validation images through this scale alone, and keeps the step with the best pixel AUROC
    (the untrained model, step 0, included), so training never makes the scale worse on it."""
    cfg = config
    rng = torch.Generator().manual_seed(cfg.train.seed + factor - 1)
    small = [downsample(t[None], factor)[0] for t in fitting]
    small = [t for t in small if min(t.shape[-2:]) >= cfg.patch.size]  # train() checked one is left
    p, stride = cfg.patch.size, cfg.patch.stride
    rows = torch.cat([patches.unfold(t[None], p, stride)[0] for t in small])  # (n, d)
    if len(rows) > MAX_PCA_ROWS:
        rows = rows[torch.randperm(len(rows), generator=rng)[:MAX_PCA_ROWS]]
    axes = PrincipalAxes(rows)
    basis = axes.basis(cfg.model.energy, cfg.model.max_rank)
    m = cfg.model
    model = build_model(axes.mean.float(), basis, m, learn=m.learn)
    code_basis = axes.basis(cfg.score.code_energy, MAX_CODE_RANK) if cfg.score.bank_size else None
    scale = Scale(factor, model)
    if code_basis is not None:  # the codes do not depend on the layers: built once
        scale.bank = build_bank(model.mean, code_basis, small, cfg)
    detector = Detector([scale], cfg, channels)  # this scale alone, for validation
    val_images, val_masks = validation_set(held_out, cfg, cfg.train.seed)
    val_start = validation_auroc(detector, val_images, val_masks)
    best_auroc, best_step, best_state = val_start, 0, copy.deepcopy(model.state_dict())

    steps = cfg.train.steps if m.learn else 0
    if steps > 0:
        optimiser = torch.optim.Adam(
            [q for q in model.parameters() if q.requires_grad], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        augmented_count = round(cfg.train.cutpaste_share * cfg.train.batch)
        for step in range(1, steps + 1):
            clean = _random_crops(small, cfg.train.batch, cfg.train.crop, rng)
            augmented, masks = clean[:augmented_count].clone(), []
            for i in range(augmented_count):
                augmented[i], mask = cutpaste(clean[i], rng, cfg.cutpaste)
                masks.append(mask)
            clean_rows = patches.unfold(clean, p, stride)  # (B, N, d)
            with torch.no_grad():
                clean_scale = model.noise_scale(clean_rows - model.mean)
            pick = _pick_rows(torch.ones(clean_rows.shape[:2]), cfg.train.patches_per_image, rng)
            sparse_clean = _sparse_at(model, clean_rows, pick, clean_scale)
            loss = cfg.train.beta * sparse_clean.abs().sum(-1).mean()
            if augmented_count:
                aug_rows = patches.unfold(augmented, p, stride)
                target = aug_rows - clean_rows[:augmented_count]  # exact sparse target S*
                with torch.no_grad():
                    aug_scale = model.noise_scale(aug_rows - model.mean)
                touched = (target.abs().sum(-1) > 0).float()
                pick = _pick_rows(1.0 + 20.0 * touched, cfg.train.patches_per_image, rng)
                sparse_aug = _sparse_at(model, aug_rows, pick, aug_scale)
                loss = loss + (sparse_aug - _gather(target, pick)).pow(2).sum(-1).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            val = None
            if step % cfg.train.val_every == 0 or step == steps:
                model.eval()
                val = validation_auroc(detector, val_images, val_masks)
                model.train()
                if val > best_auroc:
                    best_auroc, best_step, best_state = val, step, copy.deepcopy(model.state_dict())
            if on_step:
                on_step(step, loss.item(), val)
        model.load_state_dict(best_state)
    model.eval().requires_grad_(False)
    return scale, ScaleSummary(factor, basis.shape[1], best_step, val_start, best_auroc)


def train(
    data_dir: Path,
    config: Config,
    out: Path,
    on_step: Callable[[int, float, float | None], None] | None = None,
    warn: Callable[[str], None] = lambda message: None,
    on_total: Callable[[int], None] | None = None,
) -> TrainSummary:
    """Train a model per image scale on the normal images under `data_dir`, calibrate their
    combined map on the held-out images and write the checkpoint `out`. `on_step` counts
    steps over all scales; `on_total` is told their number once the scales are known."""
    started = time.perf_counter()
    cfg = config
    images, channels, skipped = load_training_images(data_dir, cfg, warn)
    rng = torch.Generator().manual_seed(cfg.train.seed)
    order = torch.randperm(len(images), generator=rng).tolist()
    held_count = min(len(images) - 1, max(1, round(cfg.train.holdout * len(images))))
    held_out = [images[i] for i in order[:held_count]]
    fitting = [images[i] for i in order[held_count:]]

    factors = []
    largest = max(min(t.shape[-2:]) for t in fitting)
    for factor in cfg.data.scales:
        side = -(-largest // factor)  # ceil: downsample() keeps partial blocks
        if side < cfg.patch.size:
            warn(
                f"scale 1/{factor} skipped: the training images are at most {side} px"
                f" on a side there, smaller than the patch size {cfg.patch.size}"
            )
            continue
        factors.append(factor)
    cfg = copy.deepcopy(cfg)
    cfg.data.scales = factors  # the checkpoint's config names the scales it holds
    scales, summaries = [], []
    steps = cfg.train.steps if cfg.model.learn else 0
    if on_total:
        on_total(steps * len(factors))
    for number, factor in enumerate(factors):
        offset = number * steps
        counted = None if on_step is None else (lambda k, loss, val, o=offset: on_step(o + k, loss, val))
        scale, scale_summary = train_scale(fitting, held_out, cfg, factor, channels, counted)
        scales.append(scale)
        summaries.append(scale_summary)
    detector = Detector(scales, cfg, channels)

    val_images, val_masks = validation_set(held_out, cfg, cfg.train.seed)
    weights, share, val_auroc = choose_weights(detector, _components_in_batches(detector, val_images), val_masks)
    normal_components = _components_in_batches(detector, held_out)
    normal_maps = [detector.combine(c[None], weights)[0] for c in normal_components]
    s = cfg.score
    detector.calibration = calibrate(normal_maps, s.image_score, s.top_k, s.threshold_quantile, s.threshold_margin)
    detector.calibration["map_weights"] = weights
    summary = TrainSummary(
        images=len(images),
        held_out=held_count,
        channels=channels,
        steps=steps,
        scales=[dataclasses.asdict(x) for x in summaries],
        threshold=detector.calibration["threshold"],
        seconds=time.perf_counter() - started,
        sparse_share=share,
        val_auroc=val_auroc,
        skipped=skipped,
    )
    save_checkpoint(out, detector, extra={"summary": summary.__dict__})
    return summary
