"""Image-threshold rules compared without retraining, on what benchmarks/accuracy.py recorded.

accuracy.py keeps, per set and seed, the normal calibration scores the threshold came from
(held-out images and training images left out of the code bank) and the raw test scores.
This script re-decides every test image under threshold = quantile(normal scores, q) x margin
for a grid of (q, margin) and prints, per rule, the sets that meet the two decision
targets (image F1 at the threshold within 0.10 of F1-max, at most 10 % of good test images
flagged; both as means over the recorded seeds), the worst gap and the worst flagged share.

    python benchmarks/accuracy.py --seeds 0 1 2 --json benchmarks/results/accuracy_seeds.json
    python benchmarks/threshold_rules.py benchmarks/results/accuracy_seeds.json
    python benchmarks/threshold_rules.py results.json --rule 0.75 1.5   # one rule, per set
    python benchmarks/threshold_rules.py ablation.jsonl --variant base   # per family, each left out
    python benchmarks/threshold_rules.py ablation.jsonl --variant base --spread   # median + k IQR

With --spread the rules are threshold = median + k x IQR of the normal scores (a robust
z-score: scale-free in both level and spread) for k in SPREADS, instead of quantile x margin.

With a JSON-lines file of benchmarks/ablation.py the runs are grouped by family (a family's
figures are means over its sets and seeds), and the rule is also chosen with each family left
out (most other families meeting both targets, then the smallest worst gap): the left-out
family's figures under that rule say whether the choice carries over to a family that took no
part in it.

Figures match accuracy.py's when the rule is the config's (min_region 0: an image is flagged
exactly when its score reaches the threshold).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lista_cli.detection.evaluation.metrics import f1_at, f1_max

QUANTILES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
MARGINS = tuple(round(1.0 + 0.05 * i, 2) for i in range(17))  # 1.00 .. 1.80
SPREADS = tuple(round(0.5 * i, 1) for i in range(1, 41))  # k of median + k IQR: 0.5 .. 20
MAX_GAP, MAX_FLAGGED = 0.10, 0.10  # the decision targets
SPREAD = "median+IQR"  # the rule form's name in place of a quantile


def threshold_of(normal: np.ndarray, quantile, margin: float) -> float:
    """quantile(normal, q) x margin, or median + margin x IQR when quantile is SPREAD."""
    if quantile == SPREAD:
        low, middle, high = np.quantile(normal, [0.25, 0.5, 0.75])
        return float(middle + margin * (high - low))
    return float(np.quantile(normal, quantile)) * margin


def all_rules(spread: bool) -> list[tuple]:
    return [(SPREAD, k) for k in SPREADS] if spread else [(q, m) for q in QUANTILES for m in MARGINS]


def runs(results: dict) -> dict[str, list[dict]]:
    """Set name -> the decision inputs of each recorded seed."""
    return {
        name: [seed["decisions"] for seed in row["seeds"]] if "seeds" in row else [row["decisions"]]
        for name, row in results.items()
    }


def decide(run: dict, quantile: float, margin: float) -> tuple[float, float, float]:
    """(F1 at the rule's threshold, F1-max, share of good test images flagged) of one run."""
    labels = np.array([kind != "good" for kind in run["test_kinds"]])
    scores = np.array(run["test_scores"])
    threshold = threshold_of(np.array(run["normal_scores"]), quantile, margin)
    return f1_at(labels, scores, threshold), f1_max(labels, scores)[0], float(np.mean(scores[~labels] >= threshold))


def per_set(sets: dict[str, list[dict]], quantile: float, margin: float) -> dict[str, tuple[float, float, float]]:
    """Set -> (F1 at threshold, F1-max, good flagged), each the mean over the set's seeds."""
    return {name: tuple(np.mean([decide(r, quantile, margin) for r in group], axis=0)) for name, group in sets.items()}


def meets(figures: tuple[float, float, float]) -> bool:
    f1, best, flagged = figures
    return best - f1 <= MAX_GAP + 1e-9 and flagged <= MAX_FLAGGED + 1e-9


def grid(sets: dict[str, list[dict]], spread: bool = False) -> None:
    form = "median + k × IQR" if spread else "quantile × margin"
    print(f"| {form} | sets meeting both (of {len(sets)}) | worst F1 gap | worst good flagged |")
    print("|---|---|---|---|")
    for quantile, margin in all_rules(spread):
        figures = per_set(sets, quantile, margin)
        gaps = {name: f[1] - f[0] for name, f in figures.items()}
        flagged = {name: f[2] for name, f in figures.items()}
        gap_set, flag_set = max(gaps, key=gaps.get), max(flagged, key=flagged.get)
        print(
            f"| {quantile} × {margin:.2f} | {sum(map(meets, figures.values()))} "
            f"| {gaps[gap_set]:.3f} ({gap_set}) | {flagged[flag_set]:.0%} ({flag_set}) |"
        )


def one_rule(sets: dict[str, list[dict]], quantile: float, margin: float) -> None:
    print(f"| set | image F1 at threshold | image F1-max | good flagged | both targets |  (q {quantile} × {margin})")
    print("|---|---|---|---|---|")
    for name, (f1, best, flagged) in per_set(sets, quantile, margin).items():
        mark = "yes" if meets((f1, best, flagged)) else "no"
        print(f"| {name} | {f1:.3f} | {best:.3f} | {flagged:.0%} | {mark} |")


def family_runs(path: Path, variant: str) -> dict[str, list[dict]]:
    """Family -> the decision inputs of every run of `variant` in an ablation.py JSON-lines file."""
    families: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["variant"] == variant:
            families.setdefault(row["family"], []).append(row["decisions"])
    return families


def best_rule(groups: dict[str, list[dict]], spread: bool = False) -> tuple:
    """The (quantile, margin) meeting both targets on most groups, then the smallest worst gap."""

    def rank(rule: tuple[float, float]) -> tuple[int, float]:
        figures = per_set(groups, *rule)
        return sum(map(meets, figures.values())), -max(f[1] - f[0] for f in figures.values())

    return max(all_rules(spread), key=rank)


def left_out(groups: dict[str, list[dict]], spread: bool = False) -> None:
    """For each family: the rule chosen on the others, and the left-out family's figures under it."""
    print(
        "| family left out | rule chosen on the others | its F1 at threshold | its F1-max | its good flagged | both |"
    )
    print("|---|---|---|---|---|---|")
    for name in groups:
        rule = best_rule({k: v for k, v in groups.items() if k != name}, spread)
        f1, best, flagged = per_set({name: groups[name]}, *rule)[name]
        mark = "yes" if meets((f1, best, flagged)) else "no"
        print(f"| {name} | {rule[0]} × {rule[1]:.2f} | {f1:.3f} | {best:.3f} | {flagged:.0%} | {mark} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="accuracy.py's JSON, or ablation.py's JSON lines with --variant")
    parser.add_argument("--rule", type=float, nargs=2, metavar=("QUANTILE", "MARGIN"), help="show one rule per set")
    parser.add_argument("--variant", help="the ablation.py variant whose runs are grouped by family")
    parser.add_argument("--spread", action="store_true", help="rules median + k IQR instead of quantile x margin")
    args = parser.parse_args()
    if args.variant:
        sets = family_runs(args.results, args.variant)
    else:
        sets = runs(json.loads(args.results.read_text())["results"]["trained"])
    if args.variant and not args.rule:
        grid(sets, args.spread)
        print()
        left_out(sets, args.spread)
    elif args.rule:
        one_rule(sets, *args.rule)
    else:
        grid(sets)


if __name__ == "__main__":
    main()
