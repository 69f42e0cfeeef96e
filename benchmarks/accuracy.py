"""Accuracy over every dev set: the default config, per set and per defect kind, worst set and mean.

For every category folder under ../shared/data (the 8 PIPED paper types, brick, kolektor,
bsdata/ballscrew, leather, and any new one) it trains the default config (plus any --set
overrides) on train/good, evaluates on test/ and times `detect` end to end (read, model,
write every output). Per set and per defect kind:
pixel AUROC, image AUROC, AUPRO (FPR <= 0.3), image F1 at the calibrated threshold, image
F1-max, the share of good test images flagged, the share of ground-truth defect regions a
predicted region touches and the predicted regions per good image (also for other
score.min_region values), training seconds and detect images/s. Then the worst set (lowest
of each column) and the mean, and per family (a set's first folder under the data root:
piped, brick, kolektor, bsdata, leather) the mean over its sets with, over several seeds,
the lowest-highest family mean. Defaults are judged per family (benchmarks/ablation.py).

    python benchmarks/accuracy.py                                 # every set
    python benchmarks/accuracy.py --only brick kolektor --set data.image_size=256
    python benchmarks/accuracy.py --untrained                     # also model.learn=false
    python benchmarks/accuracy.py --only kolektor brick --seeds 0 1 2

With --seeds the tables hold each figure's mean over the seeds (train.seed picks the held-out
images, the validation defects and the training crops), and a seed-spread table the lowest and
highest of each set's AUROCs and good flagged: on these small test sets one seed moves image
AUROC by about 0.01-0.03.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lista_cli.config import load_config
from lista_cli.detection.evaluation.evaluate import evaluate, region_metrics, score_dataset
from lista_cli.detection.scoring.checkpoint import load_checkpoint
from lista_cli.detection.training.train import train
from lista_cli.io.batch import detect
from lista_cli.io.inputs import collect_inputs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COLUMNS = [
    ("pixel_auroc", "pixel AUROC", "{:.3f}"),
    ("image_auroc", "image AUROC", "{:.3f}"),
    ("aupro", "AUPRO", "{:.3f}"),
    ("image_f1_calibrated", "image F1 at threshold", "{:.3f}"),
    ("image_f1_max", "image F1-max", "{:.3f}"),
    ("good_flagged", "good flagged", "{:.0%}"),
    ("region_recall", "defect regions hit", "{:.0%}"),
    ("regions_per_good_image", "regions per good image", "{:.2f}"),
    ("train_seconds", "train s", "{:.1f}"),
    ("detect_images_per_second", "detect img/s", "{:.1f}"),
]
WORST_IS_HIGH = {"good_flagged", "regions_per_good_image", "train_seconds"}  # worst = the largest
MIN_REGIONS = (0, 16, 64, 256)  # score.min_region values whose regions are also reported


def datasets(paths: list[Path]) -> list[Path]:
    """Category folders (with train/good) given directly or found up to two levels below."""
    found = []
    for path in paths:
        if (path / "train" / "good").is_dir():
            found.append(path)
        elif path.is_dir():
            found.extend(datasets(sorted(p for p in path.iterdir() if p.is_dir())))
    return found


def family_of(folder: Path, roots: list[Path]) -> str:
    """The family of a set: its first folder below the data root it was found under."""
    for root in roots:
        try:
            return folder.relative_to(root).parts[0]
        except ValueError:
            continue
    return folder.parent.name


def run(folder: Path, overrides: list[str], work: Path) -> dict:
    """Train, evaluate and time one set; every figure of the tables."""
    cfg = load_config(None, overrides)
    model_path = work / "model.pt"
    started = time.perf_counter()
    summary = train(folder, cfg, model_path)
    train_seconds = time.perf_counter() - started
    detector = load_checkpoint(model_path)
    scored = score_dataset(detector, folder)  # scored once: the report and the min_region table
    report = evaluate(detector, folder, scored)
    maps, masks = scored[2], scored[3]
    by_min_region = {m: region_metrics(detector, maps, masks, m) for m in MIN_REGIONS}
    inputs = collect_inputs([str(folder / "test")]).images
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)  # an output folder records one model's run (its manifest)
    result = detect(detector, inputs, out)
    row = {key: report[key] for key, _, _ in COLUMNS if key in report}
    row.update(
        train_seconds=train_seconds,
        detect_images_per_second=result.processed / result.seconds,
        summary={k: v for k, v in summary.__dict__.items() if k != "skipped"},
        kinds={kind: {key: m[key] for key, _, _ in COLUMNS if key in m} for kind, m in report["kinds"].items()},
        by_min_region=by_min_region,
        decisions={  # what benchmarks/threshold_rules.py needs to re-decide without retraining
            "threshold": detector.threshold,
            "normal_scores": list(detector.calibration.image_scores),
            "test_scores": [s["score"] for s in report["image_scores"]],
            "test_kinds": [s["kind"] for s in report["image_scores"]],
        },
    )
    return row


SPREAD_KEYS = ("pixel_auroc", "image_auroc", "aupro", "good_flagged")  # the seed-spread table's columns


def _mean(values: list) -> object:
    """Mean of numbers (None and NaN ignored; NaN if there are none), recursively of dicts
    with the same keys; other values are taken from the first."""
    first = values[0]
    if isinstance(first, dict):
        return {key: _mean([v[key] for v in values if key in v]) for key in first}
    if isinstance(first, bool) or (first is not None and not isinstance(first, (int, float))):
        return first
    numbers = [float(v) for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(numbers)) if numbers else float("nan")


def average_rows(rows: list[dict]) -> dict:
    """One set's rows at several seeds -> the mean row (tables, kinds and regions averaged),
    with each seed's figures and decision inputs kept under "seeds" and the training summary
    of the first seed."""
    mean = {key: _mean([row[key] for row in rows]) for key in rows[0] if key not in ("summary", "decisions")}
    mean["summary"] = rows[0]["summary"]
    mean["seeds"] = [{key: row.get(key) for key, _, _ in COLUMNS} | {"decisions": row["decisions"]} for row in rows]
    return mean


def spread_table(results: dict[str, dict], seeds: list[int]) -> None:
    """Lowest-highest of each set's AUROCs and good flagged over the seeds."""
    titles = {key: title for key, title, _ in COLUMNS}
    formats = {key: fmt for key, _, fmt in COLUMNS}
    print(f"\n#### seed spread (lowest-highest over seeds {' '.join(map(str, seeds))})\n")
    print("| set | " + " | ".join(titles[key] for key in SPREAD_KEYS) + " |")
    print("|---|" + "---|" * len(SPREAD_KEYS))
    for name, row in results.items():
        cells = []
        for key in SPREAD_KEYS:
            values = [s[key] for s in row["seeds"] if s.get(key) is not None and not np.isnan(s[key])]
            cells.append(f"{formats[key].format(min(values))}–{formats[key].format(max(values))}" if values else "–")
        print(f"| {name} | " + " | ".join(cells) + " |")


def cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key, float("nan"))
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else fmt.format(value)


def table(results: dict[str, dict]) -> None:
    print("| set | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(cell(row, key, fmt) for key, _, fmt in COLUMNS) + " |")
    if len(results) < 2:
        return
    worst, mean = {}, {}
    for key, _, _ in COLUMNS:
        values = [row[key] for row in results.values() if not np.isnan(row.get(key, float("nan")))]
        if values:
            worst[key] = max(values) if key in WORST_IS_HIGH else min(values)
            mean[key] = float(np.mean(values))
    print("| **worst set** | " + " | ".join(cell(worst, key, fmt) for key, _, fmt in COLUMNS) + " |")
    print("| **mean** | " + " | ".join(cell(mean, key, fmt) for key, _, fmt in COLUMNS) + " |")
    piped = {k: v for k, v in results.items() if k.startswith("PA_")}
    if 1 < len(piped) < len(results):
        means = {key: float(np.mean([r[key] for r in piped.values()])) for key, _, _ in COLUMNS}
        print(f"| **PIPED mean ({len(piped)})** | " + " | ".join(cell(means, k, f) for k, _, f in COLUMNS) + " |")


FAMILY_KEYS = ("pixel_auroc", "image_auroc", "aupro", "image_f1_calibrated", "image_f1_max", "good_flagged")


def family_table(results: dict[str, dict], families: dict[str, str]) -> None:
    """Per family: the mean over its sets (of the seed means), and with several seeds the
    lowest-highest over seeds of the family mean; then the worst family."""
    titles = {key: title for key, title, _ in COLUMNS}
    formats = {key: fmt for key, _, fmt in COLUMNS}
    print("\n#### per family (mean over its sets; lowest-highest family mean over the seeds)\n")
    print("| family | sets | " + " | ".join(titles[key] for key in FAMILY_KEYS) + " |")
    print("|---|---|" + "---|" * len(FAMILY_KEYS))
    worst: dict[str, float] = {}
    for family in sorted(set(families.values())):
        rows = [row for name, row in results.items() if families.get(name) == family]
        cells = []
        for key in FAMILY_KEYS:
            mean = float(np.nanmean([row[key] for row in rows]))
            worst[key] = mean if key not in worst else (max if key in WORST_IS_HIGH else min)(worst[key], mean)
            text = formats[key].format(mean)
            if all("seeds" in row for row in rows) and len(rows[0]["seeds"]) > 1:
                per_seed = [np.nanmean([row["seeds"][i][key] for row in rows]) for i in range(len(rows[0]["seeds"]))]
                text += f" ({formats[key].format(min(per_seed))}–{formats[key].format(max(per_seed))})"
            cells.append(text)
        print(f"| {family} | {len(rows)} | " + " | ".join(cells) + " |")
    print("| **worst family** | | " + " | ".join(formats[k].format(worst[k]) for k in FAMILY_KEYS) + " |")


def kind_tables(results: dict[str, dict]) -> None:
    keys = COLUMNS[:5]
    for name, row in results.items():
        if len(row["kinds"]) < 2:
            continue
        print(f"\n#### {name} per defect kind (that kind and the good images)\n")
        print("| kind | " + " | ".join(title for _, title, _ in keys) + " |")
        print("|---|" + "---|" * len(keys))
        for kind, metrics in row["kinds"].items():
            print(f"| {kind} | " + " | ".join(cell(metrics, key, fmt) for key, _, fmt in keys) + " |")


def region_table(results: dict[str, dict]) -> None:
    """Defect regions hit / regions per good image for each candidate score.min_region."""
    print("\n#### regions by score.min_region (defect regions hit / regions per good image)\n")
    print("| set | " + " | ".join(f"{m} px" for m in MIN_REGIONS) + " |")
    print("|---|" + "---|" * len(MIN_REGIONS))
    for name, row in results.items():
        cells = [
            f"{cell(r, 'region_recall', '{:.0%}')} / {cell(r, 'regions_per_good_image', '{:.2f}')}"
            for r in (row["by_min_region"][m] for m in MIN_REGIONS)
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=[SHARED])
    parser.add_argument("--only", nargs="+", help="run only the sets with these names (e.g. brick PA_BDP01_TL)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--untrained", action="store_true", help="also run with model.learn=false (classical ISTA)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/accuracy.json"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="train each set at these train.seed values and report the means"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    folders = [f for f in datasets(args.data) if not args.only or f.name in args.only]
    families = {f.name: family_of(f, args.data) for f in folders}
    variants = {"trained": args.overrides}
    if args.untrained:
        variants["untrained"] = args.overrides + ["model.learn=false"]
    results: dict[str, dict[str, dict]] = {name: {} for name in variants}
    seeds = args.seeds or [None]  # None: the config's seed
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            for name, overrides in variants.items():
                rows = []
                for seed in seeds:
                    extra = [] if seed is None else [f"train.seed={seed}"]
                    rows.append(run(folder, overrides + extra, Path(tmp)))
                    label = name if seed is None else f"{name} s{seed}"
                    print(
                        f"{folder.name:12s} {label:12s} "
                        + " ".join(f"{t} {cell(rows[-1], k, f)}" for k, t, f in COLUMNS),
                        file=sys.stderr,
                        flush=True,
                    )
                results[name][folder.name] = rows[0] if len(rows) == 1 else average_rows(rows)
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    for name, rows in results.items():
        seeded = "" if args.seeds is None else f", mean over seeds {' '.join(map(str, args.seeds))}"
        print(f"\n### {name} ({' '.join(variants[name]) or 'default config'}{seeded})\n")
        table(rows)
        family_table(rows, families)
        if args.seeds and len(args.seeds) > 1:
            spread_table(rows, args.seeds)
        region_table(rows)
        kind_tables(rows)
    print(f"\nmachine: {machine}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine,
        "overrides": args.overrides,
        "seeds": args.seeds,
        "families": families,
        "results": results,
    }
    args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
