"""Ablation by family: the default against one change at a time, per dev family and seed.

Every category folder under ../shared/data belongs to a family, its first folder there
(piped -> paper, brick, kolektor, bsdata, leather, any new folder). Each variant is the
default config plus overrides; `run` trains and evaluates it (benchmarks/accuracy.py's run)
on every set at every seed and appends one JSON line per (variant, set, seed) to the results
file, so an interrupted run resumes and several runs (e.g. one per process) share a file.
`table` prints, per family, each variant's mean pixel / image AUROC over sets and seeds
(change against the baseline), and the decision rule for a default:

    a variant replaces the baseline only if the worst family rises and no family falls by
    more than its seed spread (the baseline's highest - lowest family mean over the seeds,
    at least MIN_SPREAD),

applied to every family and to each leave-one-family-out subset: a decision that flips
when one family is left out rests on that family alone. A variant that removes a mechanism
(REMOVALS) is judged the other way round: the mechanism earns its place only if removing it
costs some family more than its seed spread; otherwise it goes (the simpler model wins a tie).

    python benchmarks/ablation.py run --variants base scales1 --seeds 0 1 2 --out results.jsonl
    python benchmarks/ablation.py table results.jsonl --baseline base
    python benchmarks/ablation.py sets results.jsonl --variant base   # per set and family, seed means
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import COLUMNS, SHARED, datasets, family_of  # noqa: E402

MIN_SPREAD = 0.005  # a family mean moves at least this much between seeds
METRICS = ("pixel_auroc", "image_auroc")

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "scales1": ["data.scales=[1]"],
    "no_bank": ["score.bank_size=0"],
    "no_residual": ["score.residual_weight=0"],
    "no_sparse_damping": ["score.sparse_damping=false"],
    "no_level_damping": ["score.level_damping=false"],
    "gaussian_only": ["score.sparse_smoothing=gaussian"],
    "fixed_mix": ["score.sparse_share=0.5", "score.residual_weight=0.5"],
    "patch8": ["patch.size=8", "patch.stride=4"],
    "topk": ["score.image_score=topk"],
    "energy9": ["model.energy=0.9"],
    "scales12": ["data.scales=[1,2]"],  # the default before 0.3.0
    "layers3": ["model.layers=3"],  # the default since 0.4.0 (10 before)
}


def run_variants(args: argparse.Namespace) -> None:
    from accuracy import run

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["variant"], row["set"], row["seed"]))
    folders = [f for f in datasets([args.data]) if not args.only or f.name in args.only]
    for name in args.variants:
        overrides = VARIANTS[name] if name in VARIANTS else name.split(",")
        for folder in folders:
            for seed in args.seeds:
                if (name, folder.name, seed) in done:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    row = run(folder, overrides + [f"train.seed={seed}"], Path(tmp))
                record = {
                    "variant": name,
                    "overrides": overrides,
                    "set": folder.name,
                    "family": family_of(folder, [args.data]),
                    "seed": seed,
                    **{k: row.get(k) for k in ("pixel_auroc", "image_auroc", "aupro", "image_f1_calibrated")},
                    **{k: row.get(k) for k in ("image_f1_max", "good_flagged", "train_seconds")},
                    **{k: row.get(k) for k in ("region_recall", "regions_per_good_image", "detect_images_per_second")},
                    "decisions": row["decisions"],
                }
                with args.out.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(
                    f"{name:18s} {folder.name:12s} s{seed} pixel {row['pixel_auroc']:.3f} image"
                    f" {row['image_auroc']:.3f} train {row['train_seconds']:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )


def family_means(rows: list[dict], metric: str) -> dict[str, dict[int, float]]:
    """family -> seed -> mean of the metric over the family's sets."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        values[row["family"]][row["seed"]].append(row[metric])
    return {fam: {seed: float(np.mean(v)) for seed, v in seeds.items()} for fam, seeds in values.items()}


REMOVALS = {"scales1", "no_bank", "no_residual", "no_sparse_damping", "no_level_damping", "no_edges"}
REMOVALS |= {"gaussian_only", "fixed_mix", "fixed_mix_u1"}
REMOVALS |= {"layers3"}  # 3 unfolded layers instead of 10: seven layers (and their thresholds) fewer


def decide(
    base: dict[str, dict[int, float]], other: dict[str, dict[int, float]], families: list[str], removal: bool = False
) -> bool:
    """The rule: the worst family rises and no family falls by more than its seed spread (a
    removal: no family falls by more than its spread)."""
    if any(f not in other for f in families):
        return False  # not run on every family: no decision
    families = [f for f in families if f in base]
    base_mean = {f: np.mean(list(base[f].values())) for f in families}
    other_mean = {f: np.mean(list(other[f].values())) for f in families}
    spread = {f: max(MIN_SPREAD, max(base[f].values()) - min(base[f].values())) for f in families}
    worst_rises = min(other_mean.values()) > min(base_mean.values())
    none_falls = all(other_mean[f] >= base_mean[f] - spread[f] for f in families)
    return bool(none_falls and (worst_rises or removal))


def print_table(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for path in args.results for line in path.read_text().splitlines() if line]
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_variant[row["variant"]].append(row)
    baseline = by_variant[args.baseline]
    base_keys = {(r["set"], r["seed"]) for r in baseline}
    families = sorted({r["family"] for r in baseline})
    for metric in METRICS:
        print(f"\n#### {metric.replace('_', ' ')}: family mean over sets and seeds (change against {args.baseline})\n")
        header = [
            *families,
            "worst family",
            "replaces baseline (a removal: the mechanism goes)",
            "... one family left out",
        ]
        print("| variant | " + " | ".join(header) + " |")
        print("|---|" + "---|" * (len(families) + 3))
        for name, variant_rows in by_variant.items():
            same = [r for r in variant_rows if (r["set"], r["seed"]) in base_keys]  # compared on common runs
            means = family_means(same, metric)
            ran = {r["set"] for r in same}  # the baseline on the same sets (all its seeds: its spread)
            base = family_means([r for r in baseline if r["set"] in ran], metric)
            cells = []
            for fam in families:
                if fam not in means:
                    cells.append("–")
                    continue
                value = np.mean(list(means[fam].values()))
                delta = value - np.mean([base[fam][s] for s in means[fam] if s in base[fam]])
                cells.append(f"{value:.3f}" if name == args.baseline else f"{value:.3f} ({delta:+.3f})")
            worst = min(np.mean(list(means[f].values())) for f in means) if means else float("nan")
            removal = name in REMOVALS
            verdict = "–" if name == args.baseline else ("yes" if decide(base, means, families, removal) else "no")
            if name != args.baseline and any(f not in means for f in families):
                verdict = "not run on every family"
            left_out = (
                "–"
                if name == args.baseline
                else ", ".join(
                    f"-{fam}: {'yes' if decide(base, means, [f for f in families if f != fam], removal) else 'no'}"
                    for fam in families
                )
            )
            print(f"| {name} | " + " | ".join(cells) + f" | {worst:.3f} | {verdict} | {left_out} |")
    seeds = sorted({r["seed"] for r in rows})
    sets = sorted({r["set"] for r in rows})
    print(f"\n{len(rows)} runs; seeds {' '.join(map(str, seeds))}; sets {' '.join(sets)}")


SET_COLUMNS = [column for column in COLUMNS if column[0] not in ("region_recall", "regions_per_good_image")]


def print_sets(args: argparse.Namespace) -> None:
    """One variant per set (means over seeds, lowest-highest pixel / image AUROC), then per family."""
    rows = [json.loads(line) for path in args.results for line in path.read_text().splitlines() if line]
    rows = [r for r in rows if r["variant"] == args.variant]
    by_set: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_set[row["set"]].append(row)

    def cells(group: list[dict]) -> list[str]:
        out = []
        for key, _, fmt in SET_COLUMNS:
            values = [r[key] for r in group if r.get(key) is not None]
            out.append(fmt.format(float(np.mean(values))) if values else "–")
        return out

    print("| set | family | seeds | " + " | ".join(t for _, t, _ in SET_COLUMNS) + " | pixel / image AUROC range |")
    print("|---|---|---|" + "---|" * (len(SET_COLUMNS) + 1))
    for name in sorted(by_set, key=lambda n: (by_set[n][0]["family"], n)):
        group = by_set[name]
        spread = " / ".join(f"{min(r[k] for r in group):.3f}–{max(r[k] for r in group):.3f}" for k in METRICS)
        print(f"| {name} | {group[0]['family']} | {len(group)} | " + " | ".join(cells(group)) + f" | {spread} |")
    print("\n| family | sets | " + " | ".join(t for _, t, _ in SET_COLUMNS) + " | family mean over seeds, range |")
    print("|---|---|" + "---|" * (len(SET_COLUMNS) + 1))
    families = sorted({r["family"] for r in rows})
    for family in families:
        group = [r for r in rows if r["family"] == family]
        means = family_means(group, "pixel_auroc"), family_means(group, "image_auroc")
        spread = " / ".join(f"{min(m[family].values()):.3f}–{max(m[family].values()):.3f}" for m in means)
        sets = len({r["set"] for r in group})
        print(f"| {family} | {sets} | " + " | ".join(cells(group)) + f" | {spread} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="train and evaluate variants, append rows to --out")
    runner.add_argument("--variants", nargs="+", default=list(VARIANTS), help="names, or key=val,key=val overrides")
    runner.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    runner.add_argument("--only", nargs="+", help="only the sets with these names")
    runner.add_argument("--data", type=Path, default=SHARED)
    runner.add_argument("--threads", type=int, default=0)
    runner.add_argument("--out", type=Path, required=True)
    tabler = commands.add_parser("table", help="family table and decisions from result files")
    tabler.add_argument("results", type=Path, nargs="+")
    tabler.add_argument("--baseline", default="base")
    setter = commands.add_parser("sets", help="one variant per set and per family")
    setter.add_argument("results", type=Path, nargs="+")
    setter.add_argument("--variant", default="base")
    args = parser.parse_args()
    {"run": run_variants, "table": print_table, "sets": print_sets}[args.command](args)


if __name__ == "__main__":
    main()
