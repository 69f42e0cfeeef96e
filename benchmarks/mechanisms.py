"""Each scoring mechanism switched off on the same trained layers, per dev set and seed.

`benchmarks/ablation.py run` retrains the whole detector for every variant. The mechanisms on
the scoring path (the map mix and its search, the oriented smoothing of S, the sparse
divisors, level and edge damping, the coarse scale, the code bank, the image statistic)
act after the layers are trained, so here each set is trained once per seed with the default
and every variant re-does only what the mechanism changes: the mix is chosen again on the
same validation set and the edges and thresholds are calibrated again on the same held-out
images (the same seeds as `lista train`), then the test set is scored. The layers and the
step validation picked are the default's, so a row shows what the mechanism adds to these
layers, not what a model trained without it would do (the training steps differ little:
benchmarks/results/ablation_screen_seed0.md has the retrained rows).

Each image's component maps do not depend on the mix or the calibration: they are computed
once per image and bank layout and reused by every variant of that layout.

    python benchmarks/mechanisms.py --seeds 0 1 2 --only brick kolektor --out results.jsonl
    python benchmarks/ablation.py table results.jsonl --baseline base

The rows have ablation.py's format (variant, set, family, seed, figures, decision inputs);
`base` re-derives the default's own calibration and must equal the trained model's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, datasets, family_of  # noqa: E402

from lista_cli.config import load_config  # noqa: E402
from lista_cli.detection.evaluation import evaluate as evaluation  # noqa: E402
from lista_cli.detection.evaluation.evaluate import evaluate  # noqa: E402
from lista_cli.detection.scoring import pixel_maps  # noqa: E402
from lista_cli.detection.scoring.checkpoint import load_checkpoint  # noqa: E402
from lista_cli.detection.scoring.detector import Detector  # noqa: E402
from lista_cli.detection.training import edges, mixing, train  # noqa: E402
from lista_cli.detection.training.training_data import load_training_images  # noqa: E402
from lista_cli.detection.training.validation import make_validation_set  # noqa: E402

# name -> (score.* overrides, structural change); "base" first: every variant is scored against it.
VARIANTS: dict[str, tuple[dict, str | None]] = {
    "base": ({}, None),
    "fixed_mix": ({"sparse_share": 0.5, "residual_weight": 0.5}, None),
    "fixed_mix_u1": ({"sparse_share": 0.5, "residual_weight": 1.0}, None),
    "no_residual": ({"residual_weight": 0.0}, None),
    "gaussian_only": ({"sparse_smoothing": "gaussian"}, None),
    "no_level_damping": ({"level_damping": False}, None),
    "no_edges": ({}, "no_edges"),
    "topk": ({"image_score": "topk"}, None),
    "topk_small": ({"image_score": "topk", "top_k": 0.001}, None),
    "no_sparse_damping": ({}, "no_divisors"),
    "scales1": ({}, "scales1"),
    "no_bank": ({}, "no_bank"),
    "lean": (
        {"sparse_share": 0.5, "residual_weight": 0.5, "sparse_smoothing": "gaussian", "level_damping": False},
        "lean",
    ),
    # The default before 0.3.0 (scales 1 and 2, the same layers); every scale weighed alike;
    # the finest scale weighed twice all coarser ones together (the default: as much as them).
    "scales12": ({}, "scales12"),
    "scales124": ({}, "scales124"),  # the default's scales, on layers trained with more (--set data.scales=...)
    "equal_scales": ({}, "equal_scales"),
    "fine_two_thirds": ({}, "fine_two_thirds"),
    # Edge damping over the band a two-scale model had (the reach of a 1/2-scale patch, not a 1/4 one's).
    "edge_band_two_scales": ({}, "edge_band_two_scales"),
    # Scales fused by their maximum (or root sum of squares) instead of a weighted sum: each
    # scale's own mix of maps, in the normal-quantile unit, every scale weighing alike.
    "scale_max": ({}, "scale_max"),
    "scale_rms": ({}, "scale_rms"),
    # The finest scale's share of the scale weights chosen on the validation set with the mix
    # (a half or two thirds: lista 0.5.0's default), or always a half (0.3.0 and 0.4.0).
    "fine_share_search": ({}, "fine_share_search"),
    "fine_half": ({}, "fine_half"),
    # The component maps of every scale fused by their joint density on normal pixels instead of
    # a weighted sum chosen on synthetic defects: each smoothed map v_i becomes log(v_i + c_i),
    # c_i a tenth of its 0.99 quantile on the clean validation images, and the pixel's score is
    # the Mahalanobis distance of that vector from those images' pixels (full covariance, or
    # per map alone).
    "density": ({}, "density"),
    "density_diag": ({}, "density_diag"),
}

# The scale factors a structural change keeps of the trained detector's.
KEPT_SCALES = {"scales1": [1], "scales12": [1, 2], "scales124": [1, 2, 4]}

# The candidate shares of the finest scale's maps in the scale weights that validation chooses
# among (mixing.FINEST_SHARES; None: 1 / the scale count, every scale alike).
FINE_SHARES = {
    "equal_scales": None,
    "fine_two_thirds": (2 / 3,),
    "fine_half": (0.5,),
    "fine_share_search": (0.5, 2 / 3),
    "scale_max": None,
    "scale_rms": None,
}

# Power of the fusion across scales: (sum over scales of each scale's map ** p) ** (1 / p).
FUSION_POWERS = {"scale_max": float("inf"), "scale_rms": 2.0}


def scale_groups(detector: Detector) -> list[list[int]]:
    """The component indices of each scale, finest first."""
    groups, start = [], 0
    for scale in detector.scales:
        groups.append(list(range(start, start + len(scale.kinds))))
        start += len(scale.kinds)
    return groups


def fuse(per_scale: list[torch.Tensor], power: float) -> torch.Tensor:
    """(sum_s map_s ** power) ** (1 / power), the maximum when power is infinite."""
    stacked = torch.stack(per_scale).clamp(min=0)
    if power == float("inf"):
        return stacked.amax(0)
    return stacked.pow(power).sum(0).pow(1 / power)


class ScaleFusion:
    """Detector.combine and mixing.best_mix fusing the scales' mixes by `power` (fuse)."""

    def __init__(self, power: float) -> None:
        self.power = power
        self.combine, self.best_mix = Detector.combine, mixing.best_mix

    def __enter__(self) -> ScaleFusion:
        power = self.power

        def fused_combine(detector, components, weights=None, sparse_smoothing=None):
            weights = detector.map_weights if weights is None else weights
            smoothing = detector.calibration.sparse_smoothing if sparse_smoothing is None else sparse_smoothing
            score, kinds = detector.config.score, detector.kinds
            per_scale = [
                pixel_maps.smooth_mix(
                    components[:, group],
                    [weights[i] for i in group],
                    [kinds[i] for i in group],
                    score.smooth_sigma,
                    smoothing,
                    score.code_smooth_sigma,
                )
                for group in scale_groups(detector)
            ]
            return fuse(per_scale, power)

        def fused_best_mix(detector, validation, samples):
            groups = scale_groups(detector)
            score_cfg = detector.config.score
            shares = mixing.SPARSE_SHARES if score_cfg.sparse_share is None else [score_cfg.sparse_share]
            residuals = mixing.RESIDUAL_WEIGHTS if score_cfg.residual_weight is None else [score_cfg.residual_weight]
            levels = [sample.level for sample in samples]
            best = None
            for residual in residuals:
                for share in shares:
                    weights = mixing.share_weights(detector, levels, share, residual, mixing.FINEST_SHARES[0])

                    def mixed(pick, weights=weights):
                        return fuse([sum(weights[i] * pick(samples[i]) for i in group) for group in groups], power)

                    negatives = mixed(lambda sample: sample.negatives)
                    positives = {n: mixed(lambda sample, n=n: sample.positives[n]) for n in samples[0].positives}
                    score, _ = validation.score_sample(negatives, positives)
                    if best is None or score > best.score:
                        best = mixing.Mix(weights, share, residual, score)
            return best

        Detector.combine, mixing.best_mix = fused_combine, fused_best_mix
        return self

    def __exit__(self, *exc) -> None:
        Detector.combine, mixing.best_mix = self.combine, self.best_mix


def bank_key(bank) -> tuple:
    """What tells one code bank from another here: its size, a checksum, its divisors."""
    return len(bank.codes), float(bank.codes.double().sum()), float(bank.sparse_divisors.double().sum())


# The maps each change computes: variants of one layout share them.
LAYOUTS = {
    None: "full",
    "no_edges": "full",
    "no_divisors": "plain",
    "lean": "plain",
    "scales1": "fine",
    "no_bank": "sparse",
    "scales12": "two",
    "scales124": "three",
    "equal_scales": "full",
    "fine_two_thirds": "full",
    "edge_band_two_scales": "full",
    "scale_max": "full",
    "scale_rms": "full",
    "density": "full",
    "density_diag": "full",
    "fine_share_search": "full",
    "fine_half": "full",
}


class ComponentCache:
    """Detector.component_maps memoised on (image bytes, noise, bank layout): the maps of an
    image depend on the layers (shared by every variant) and on the banks, not on the mix."""

    def __init__(self) -> None:
        self.maps: dict[tuple, torch.Tensor] = {}
        self.original = Detector.component_maps

    def __enter__(self) -> ComponentCache:
        cache, original = self, self.original

        def cached(detector: Detector, images: torch.Tensor, noise=None) -> torch.Tensor:
            layout = tuple((int(s.factor), None if s.bank is None else bank_key(s.bank)) for s in detector.scales)
            out = []
            for index in range(images.shape[0]):
                image = images[index : index + 1].contiguous()
                level = None if noise is None else tuple(float(n[index]) for n in noise)
                digest = hashlib.sha1(image.numpy().tobytes()).hexdigest()
                key = (digest, tuple(image.shape), level, layout)
                if key not in cache.maps:
                    part = None if noise is None else [n[index : index + 1] for n in noise]
                    cache.maps[key] = original(detector, image, part)
                out.append(cache.maps[key])
            return torch.cat(out)

        Detector.component_maps = cached
        return self

    def __exit__(self, *exc) -> None:
        Detector.component_maps = self.original


DENSITY_OFFSET = 0.1  # c_i in units of the map's 0.99 quantile on normal pixels
DENSITY_PIXELS = 200_000  # normal pixels the density is fitted on


def smoothed_components(detector: Detector, components: torch.Tensor, smoothing: str) -> torch.Tensor:
    """(B, M, h, w) component maps -> each smoothed alone as the mix smooths it."""
    score = detector.config.score
    out = []
    for i, kind in enumerate(detector.kinds):
        if kind == "sparse" and smoothing == "oriented":
            out.append(pixel_maps.oriented_smooth(components[:, i], score.smooth_sigma))
        else:
            level = pixel_maps.kind_sigma(kind, score.smooth_sigma, score.code_smooth_sigma)
            out.append(pixel_maps.gaussian_smooth(components[:, i], level))
    return torch.stack(out, dim=1)


class JointDensity:
    """mixing.choose_weights fitting a Gaussian to the log component maps of the clean
    validation images (the smoothing still chosen as the default chooses it), and
    Detector.combine scoring each pixel by its Mahalanobis distance."""

    def __init__(self, diagonal: bool) -> None:
        self.diagonal = diagonal
        self.combine, self.choose = Detector.combine, mixing.choose_weights
        self.fitted: dict[str, tuple] = {}  # every detector of the variant (banks without an image too)

    def __enter__(self) -> JointDensity:
        diagonal, choose, fitted = self.diagonal, self.choose, self.fitted

        def fit(detector, validation, components):
            mix = choose(detector, validation, components)
            clean = torch.stack([components[i] for i in validation.clean])
            smoothed = smoothed_components(detector, clean, mix.sparse_smoothing)
            pixels = smoothed.transpose(0, 1).reshape(smoothed.shape[1], -1).double()  # (M, n)
            if pixels.shape[1] > DENSITY_PIXELS:
                pixels = pixels[:, :: -(-pixels.shape[1] // DENSITY_PIXELS)]
            offsets = DENSITY_OFFSET * torch.quantile(pixels, 0.99, dim=1).clamp(min=1e-6)
            logs = torch.log(pixels + offsets[:, None])
            mean = logs.mean(dim=1)
            cov = torch.cov(logs)
            if diagonal:
                cov = torch.diag(torch.diag(cov))
            cov = cov + 1e-3 * torch.trace(cov) / len(cov) * torch.eye(len(cov), dtype=cov.dtype)
            whitening = torch.linalg.cholesky(torch.linalg.inv(cov))  # W W^T = cov^-1
            fitted["density"] = (offsets.float(), mean.float(), whitening.float())
            return mix

        def scored(detector, components, weights=None, sparse_smoothing=None):
            smoothing = detector.calibration.sparse_smoothing if sparse_smoothing is None else sparse_smoothing
            offsets, mean, whitening = fitted["density"]
            smoothed = smoothed_components(detector, components, smoothing)
            logs = torch.log(smoothed.clamp(min=0) + offsets[None, :, None, None]) - mean[None, :, None, None]
            white = torch.einsum("bmhw,mk->bkhw", logs, whitening)
            return white.square().sum(dim=1).sqrt()

        Detector.combine, mixing.choose_weights = scored, fit
        train.choose_weights = fit
        return self

    def __exit__(self, *exc) -> None:
        Detector.combine, mixing.choose_weights = self.combine, self.choose
        train.choose_weights = self.choose


def variant_detector(trained: Detector, overrides: dict, change: str | None) -> Detector:
    """The trained detector with the mechanism off: score.* overrides, and the banks or scales changed."""
    detector = copy.deepcopy(trained)
    for key, value in overrides.items():
        setattr(detector.config.score, key, value)
    if change in ("no_divisors", "lean"):
        for scale in detector.scales:
            if scale.bank is not None:
                scale.bank.sparse_divisors = torch.zeros(0)
    if change in KEPT_SCALES:
        kept = KEPT_SCALES[change]
        detector.scales = torch.nn.ModuleList([s for s in detector.scales if int(s.factor) in kept])
        detector.config.data.scales = kept
    if change == "no_bank":
        for scale in detector.scales:
            scale.bank = None
    return detector


def recalibrate(detector: Detector, context: dict, change: str | None):
    """Mix and calibrate the detector again as `lista train` does, on the same images; -> the mix."""
    profile, band_width, finest_shares = edges.edge_profile, edges.band_width, mixing.FINEST_SHARES
    if change in ("no_edges", "lean"):
        edges.edge_profile = lambda maps, width: ([1.0] * width, [1.0] * width)
    if change == "edge_band_two_scales":
        edges.band_width = lambda patch, coarsest, reach, side: band_width(patch, min(coarsest, 2), reach, side)
    if change in FINE_SHARES and len(detector.scales) > 1:
        mixing.FINEST_SHARES = FINE_SHARES[change] or (1 / len(detector.scales),)
    try:
        return train._mix_and_calibrate(detector, *context["args"])[0]
    finally:
        edges.edge_profile, edges.band_width, mixing.FINEST_SHARES = profile, band_width, finest_shares


def trained_detector(folder: Path, cfg) -> Detector:
    """`lista train`'s detector as it is when saved, with what training keeps in memory only
    (each bank code's training image, for the leave-one-out calibration)."""
    saved: list[Detector] = []
    save = train.save_checkpoint
    train.save_checkpoint = lambda out, detector, extra=None: (saved.append(detector), save(out, detector, extra))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            train.train(folder, cfg, Path(tmp) / "model.pt")
            seconds = time.perf_counter() - started
            reloaded = load_checkpoint(Path(tmp) / "model.pt")
    finally:
        train.save_checkpoint = save
    detector = saved[0]
    if reloaded.threshold != detector.threshold:
        raise RuntimeError("the saved detector differs from the one in memory")
    detector.train_seconds = seconds
    return detector


def training_context(folder: Path, cfg) -> dict:
    """The images `lista train` mixed and calibrated on (same split, validation and seeds)."""
    loaded = load_training_images(folder, cfg, lambda message: None)
    held_out, fitting = train._split(loaded.tensors, cfg)
    validation = make_validation_set(held_out, cfg, cfg.train.seed)
    shape = tuple(validation.images.shape[-2:])
    held_sizes, fitting_sizes = train._split(loaded.input_sizes, cfg)
    held_paths, _ = train._split(loaded.paths, cfg)
    return {"args": (fitting, held_out, validation, shape, held_paths, (fitting_sizes, held_sizes))}


def row_of(report: dict, detector: Detector) -> dict:
    keys = ("pixel_auroc", "image_auroc", "aupro", "image_f1_calibrated", "image_f1_max", "good_flagged")
    return {
        **{k: report.get(k) for k in keys},
        "decisions": {
            "threshold": detector.threshold,
            "normal_scores": list(detector.calibration.image_scores),
            "test_scores": [s["score"] for s in report["image_scores"]],
            "test_kinds": [s["kind"] for s in report["image_scores"]],
        },
    }


def run_set(
    folder: Path, seed: int, names: list[str], base_overrides: list[str], out: Path, data: Path, label: str | None
) -> None:
    cfg = load_config(None, base_overrides + [f"train.seed={seed}"])
    trained = trained_detector(folder, cfg)
    train_seconds = trained.train_seconds
    context = training_context(folder, trained.config)
    order = sorted(names, key=lambda n: (n != "base", LAYOUTS[VARIANTS[n][1]] != "full", LAYOUTS[VARIANTS[n][1]]))
    with ComponentCache() as cache:
        trained_report = evaluate(trained, folder)  # its maps are base's: kept for it
        trained_figures = {k: trained_report[k] for k in ("pixel_auroc", "image_auroc", "image_f1_calibrated")}
        layout = "full"
        for name in order:
            overrides, change = VARIANTS[name]
            if LAYOUTS[change] != layout:
                cache.maps.clear()  # bounded memory: one layout's maps at a time
                layout = LAYOUTS[change]
            started = time.perf_counter()
            detector = variant_detector(trained, overrides, change)
            if change in FUSION_POWERS:
                patch = ScaleFusion(FUSION_POWERS[change])
            elif change in ("density", "density_diag"):
                patch = JointDensity(diagonal=change == "density_diag")
            else:
                patch = contextlib.nullcontext()
            with patch:
                mix = recalibrate(detector, context, change)
                report = evaluate(detector, folder)
            record = {
                "variant": name if not label else label if name == "base" else f"{label}+{name}",
                "overrides": base_overrides
                + [f"score.{k}={v}" for k, v in overrides.items()]
                + ([change] if change else []),
                "set": folder.name,
                "family": family_of(folder, [data]),
                "seed": seed,
                "train_seconds": train_seconds,
                "variant_seconds": time.perf_counter() - started,
                "mix": {
                    "sparse_share": mix.sparse_share,
                    "residual_weight": mix.residual_weight,
                    "sparse_smoothing": mix.sparse_smoothing,
                    "finest_share": mix.finest_share,
                },
                **({"trained": trained_figures} if name == "base" else {}),
                **row_of(report, detector),
            }
            with out.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(
                f"{name:18s} {folder.name:12s} s{seed} pixel {record['pixel_auroc']:.3f}"
                f" image {record['image_auroc']:.3f} ({record['variant_seconds']:.0f}s)",
                file=sys.stderr,
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", help="only the sets with these names")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="base config override key=value")
    parser.add_argument(
        "--label",
        help="name the rows' variant LABEL (LABEL+variant): a model trained with --set overrides, compared"
        " in `ablation.py table` against the default's base rows",
    )
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-aupro", action="store_true", help="skip AUPRO (the slowest figure on large images)")
    args = parser.parse_args()
    if args.no_aupro:
        evaluation.aupro = lambda masks, maps, max_fpr=0.3: float("nan")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["set"], row["seed"]))
    names = ["base"] + [n for n in args.variants if n != "base"]
    folders = [f for f in datasets([args.data]) if not args.only or f.name in args.only]
    if not folders:
        sys.exit(f"no category folder under {args.data}" + (f" named {' '.join(args.only)}" if args.only else ""))
    for folder in folders:
        for seed in args.seeds:
            if (folder.name, seed) not in done:
                run_set(folder, seed, names, args.overrides, args.out, args.data, args.label)


if __name__ == "__main__":
    main()
