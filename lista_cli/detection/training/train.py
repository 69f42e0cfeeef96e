"""Training on normal images only: PCA init, unfolding supervised by synthetic defects, calibration."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...config import Config
from ..model import patches
from ..scoring.checkpoint import save_checkpoint
from ..scoring.detector import Calibration, Detector, Scale
from ..scoring.resampling import downsample
from .calibration import calibrate_detector
from .cutpaste import cutpaste
from .defects import FAMILIES, drawn_defect
from .mixing import StepValidation, choose_weights, component_maps
from .scales import init_scale, usable_factors
from .sparse_levels import sparse_divisors
from .training_data import TrainError, load_training_images, training_folder
from .validation import ValidationSet, make_validation_set, mask_examples

TRAINING_FAMILIES = list(FAMILIES)


@dataclass
class TrainSummary:
    images: int
    held_out: int
    channels: int
    steps: int  # per scale
    scales: list[dict]  # a ScaleSummary per image scale, as a dict
    threshold: float
    pixel_threshold: float
    seconds: float
    image_size: str = ""  # the working size, e.g. "250 px (x1)"
    sparse_share: float = 1.0  # weight of the sparse-part maps against the code maps
    residual_weight: float = 0.0  # weight of the residual-level maps relative to the code maps
    sparse_smoothing: str = "gaussian"  # smoothing of the sparse-part maps (score.sparse_smoothing)
    finest_share: float = 0.5  # the finest scale's share of the scale weights (mixing.FINEST_SHARES)
    val_auroc: float = 0.0  # validation score of the combined map: mean pixel AUROC over defect families
    val_families: dict[str, float] = field(default_factory=dict)  # that map's pixel AUROC per defect family
    level_reference: float | None = None  # maps with a higher median are damped (levels.py); None: off
    level_cap: float = 1.0  # ... by at most this factor
    skipped: list[str] = field(default_factory=list)


def _random_crops(images: list[torch.Tensor], count: int, size: int, rng: torch.Generator) -> torch.Tensor:
    """(count, C, side, side) random crops with random horizontal and vertical flips, from
    images of any sizes: side = `size`, or the smallest side of the images drawn if less."""
    picked = [images[int(torch.randint(len(images), (), generator=rng))] for _ in range(count)]
    side = min([size] + [min(image.shape[-2:]) for image in picked])
    crops = []
    for image in picked:
        height, width = image.shape[-2:]
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


@dataclass
class ScaleSummary:
    factor: int
    rank: int
    best_step: int
    val_auroc_start: float
    val_auroc_best: float
    damped_codes: int = 0  # bank codes with a sparse divisor above 1 (sparse_levels.py)
    bank_codes: int = 0
    largest_divisor: float = 1.0


def training_defect(crop: torch.Tensor, rng: torch.Generator, config: Config) -> torch.Tensor:
    """A crop with one synthetic defect: CutPaste, or with `train.defects: all` half the time
    a drawn family instead. Whatever the family, the exact sparse target is the difference
    patches(augmented) - patches(clean)."""
    if config.train.defects == "all" and torch.rand((), generator=rng) < 0.5:
        family = TRAINING_FAMILIES[int(torch.randint(len(TRAINING_FAMILIES), (), generator=rng))]
        return drawn_defect(crop, rng, family)[0]
    return cutpaste(crop, rng, config.cutpaste)[0]


def _step_loss(model, small: list[torch.Tensor], cfg: Config, rng: torch.Generator) -> torch.Tensor:
    """The loss of one training step on a batch of random crops of the (downsampled) normal
    images: beta * ||S||_1 on clean crops, and on crops given a synthetic defect the squared
    error of S against the exact sparse target (the rows that changed)."""
    p, stride = cfg.patch.size, cfg.patch.stride
    augmented_count = round(cfg.train.cutpaste_share * cfg.train.batch)
    clean = _random_crops(small, cfg.train.batch, cfg.train.crop, rng)
    augmented = clean[:augmented_count].clone()
    for i in range(augmented_count):
        augmented[i] = training_defect(clean[i], rng, cfg)
    clean_rows = patches.unfold(clean, p, stride)  # (B, N, d)
    with torch.no_grad():
        clean_scale = model.noise_scale(clean_rows - model.mean)
    pick = _pick_rows(torch.ones(clean_rows.shape[:2]), cfg.train.patches_per_crop, rng)
    sparse_clean = _sparse_at(model, clean_rows, pick, clean_scale)
    loss = cfg.train.beta * sparse_clean.abs().sum(-1).mean()
    if augmented_count:
        aug_rows = patches.unfold(augmented, p, stride)
        target = aug_rows - clean_rows[:augmented_count]  # exact sparse target S*
        with torch.no_grad():
            aug_scale = model.noise_scale(aug_rows - model.mean)
        touched = (target.abs().sum(-1) > 0).float()
        pick = _pick_rows(1.0 + 20.0 * touched, cfg.train.patches_per_crop, rng)
        sparse_aug = _sparse_at(model, aug_rows, pick, aug_scale)
        loss = loss + (sparse_aug - _gather(target, pick)).pow(2).sum(-1).mean()
    return loss


def train_layers(
    scale: Scale,
    images: list[torch.Tensor],
    validation: ValidationSet,
    shape: tuple[int, int],
    config: Config,
    channels: int,
    on_step: Callable[[int, float, float | None], None] | None = None,
) -> ScaleSummary:
    """Defect-supervised training (CutPaste and drawn families, see training_defect) of one
    scale's unfolded layers on the training images downsampled by its factor. Validation
    scores the validation images (resized to the working `shape`) through this scale alone
    and keeps the step with the best score, the untrained model (step 0) included, so
    training never makes the scale worse on it."""
    cfg, model, factor = config, scale.model, scale.factor
    rng = torch.Generator().manual_seed(cfg.train.seed + factor - 1)
    small = [downsample(t[None], factor)[0] for t in images]
    small = [t for t in small if min(t.shape[-2:]) >= cfg.patch.size]  # train() checked one is left
    validate = StepValidation(scale, validation, shape, cfg, channels)  # this scale alone
    val_start = validate.score()
    best_score, best_step, best_state = val_start, 0, copy.deepcopy(model.state_dict())

    steps = cfg.train.steps if cfg.model.learn else 0
    if steps > 0:
        optimiser = torch.optim.Adam(
            [q for q in model.parameters() if q.requires_grad], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        for step in range(1, steps + 1):
            loss = _step_loss(model, small, cfg, rng)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            val = None
            if step % cfg.train.val_every == 0 or step == steps:
                model.eval()
                val = validate.score()
                model.train()
                if val > best_score:
                    best_score, best_step, best_state = val, step, copy.deepcopy(model.state_dict())
            if on_step:
                on_step(step, loss.item(), val)
        model.load_state_dict(best_state)
    model.eval().requires_grad_(False)
    return ScaleSummary(factor, model.basis.shape[1], best_step, val_start, best_score)


def _mix_and_calibrate(
    detector: Detector, fitting, held_out, validation: ValidationSet, shape, held_paths, sizes=None
) -> tuple:
    """Choose the map mix on the validation set, then calibrate edges and thresholds (the
    mask level on defects drawn into the held-out files `held_paths`);
    -> (the mix, the validation images' maps)."""
    components = component_maps(detector, validation.resized(shape))
    mix = choose_weights(detector, validation, components)
    detector.calibration = Calibration(map_weights=mix.weights, sparse_smoothing=mix.sparse_smoothing)
    validation_maps = detector.combine(torch.stack(components))
    cfg = detector.config
    defects = mask_examples(held_paths, detector.channels, detector.working_shape, cfg, cfg.train.seed)
    calibrate_detector(detector, fitting, held_out, defects, sizes)
    return mix, validation_maps


def _split(arrays: list, cfg: Config) -> tuple[list, list]:
    """(held-out, fitting) images: a seeded share train.holdout held out (at least one each)."""
    order = torch.randperm(len(arrays), generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()
    held_count = min(len(arrays) - 1, max(1, round(cfg.train.holdout * len(arrays))))
    return [arrays[i] for i in order[:held_count]], [arrays[i] for i in order[held_count:]]


def _counted(on_step, offset: int):
    """on_step for one scale's steps, counted on from `offset` (all scales share one count)."""
    return None if on_step is None else (lambda k, loss, val: on_step(offset + k, loss, val))


def train(
    data_dir: Path,
    config: Config,
    out: Path,
    on_step: Callable[[int, float, float | None], None] | None = None,
    warn: Callable[[str], None] = lambda message: None,
    on_total: Callable[[int], None] | None = None,
) -> TrainSummary:
    """Train a model per image scale on the normal images under
    `data_dir`, mix and calibrate their maps and write the checkpoint `out`. `on_step`
    counts steps over all scales; `on_total` is told their number once the scales are known."""
    started = time.perf_counter()
    cfg = config
    loaded = load_training_images(data_dir, cfg, warn)
    channels, size = loaded.channels, loaded.size
    held_out, fitting = _split(loaded.tensors, cfg)
    held_count = len(held_out)
    validation = make_validation_set(held_out, cfg, cfg.train.seed)
    shape = tuple(validation.images.shape[-2:])
    factors = usable_factors(fitting, cfg, warn)
    if not factors:
        raise TrainError(f"{training_folder(data_dir)}: no image scale holds a {cfg.patch.size} px patch")
    scales = [init_scale(fitting, cfg, factor) for factor in factors]

    cfg = copy.deepcopy(cfg)
    cfg.data.scales = [scale.factor for scale in scales]  # the checkpoint's config names the scales it holds
    steps = cfg.train.steps if cfg.model.learn else 0
    if on_total:
        on_total(steps * len(scales))
    summaries = [
        train_layers(scale, fitting, validation, shape, cfg, channels, _counted(on_step, number * steps))
        for number, scale in enumerate(scales)
    ]
    if cfg.score.sparse_damping:  # needs the trained layers; before the maps are mixed and calibrated
        for scale, summary in zip(scales, summaries, strict=True):
            if scale.bank is not None:
                divisors = sparse_divisors(scale, fitting, cfg.patch.size, cfg.patch.stride, channels, cfg.train.seed)
                scale.bank.sparse_divisors = divisors
                summary.damped_codes, summary.bank_codes = int((divisors > 1).sum()), len(divisors)
                summary.largest_divisor = float(divisors.max())
    detector = Detector(scales, cfg, channels, working_scale=size.factor)

    held_sizes, fitting_sizes = _split(loaded.input_sizes, cfg)  # calibration scores at the input size, as detect
    held_paths, _ = _split(loaded.paths, cfg)
    mix, validation_maps = _mix_and_calibrate(
        detector, fitting, held_out, validation, shape, held_paths, (fitting_sizes, held_sizes)
    )
    summary = TrainSummary(
        images=len(loaded.tensors),
        held_out=held_count,
        channels=channels,
        steps=steps,
        scales=[dataclasses.asdict(x) for x in summaries],
        threshold=detector.calibration.threshold,
        pixel_threshold=detector.pixel_threshold,
        seconds=time.perf_counter() - started,
        image_size=size.label,
        sparse_share=mix.sparse_share,
        residual_weight=mix.residual_weight,
        sparse_smoothing=mix.sparse_smoothing,
        finest_share=mix.finest_share,
        val_auroc=mix.score,
        val_families=validation.score(validation_maps)[1],
        level_reference=detector.calibration.level_reference,
        level_cap=detector.calibration.level_cap,
        skipped=loaded.skipped,
    )
    save_checkpoint(out, detector, extra={"summary": summary.__dict__})
    return summary
