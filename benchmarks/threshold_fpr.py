"""Does `lista threshold --max-fpr R` on held-out normal images hold on new good images?

For every dev set under ../shared/data: train the default config on 80 % of train/good
(seeded split), run `lista threshold`'s code with --max-fpr R on the other 20 % (normal
images the model never saw), then measure the false-positive rate on test/good and the
recall on the defective test images, for the model's own calibration and the new threshold.

    python benchmarks/threshold_fpr.py --max-fpr 0.05
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from lista_cli.config import load_config
from lista_cli.detection.evaluation.evaluate import score_dataset
from lista_cli.detection.evaluation.thresholds import set_thresholds
from lista_cli.detection.scoring.checkpoint import load_checkpoint
from lista_cli.detection.training.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, datasets  # noqa: E402


def rates(model: Path, folder: Path) -> tuple[float, float, int, int]:
    """(FPR on test/good, recall on the defective test images, their counts)."""
    detector = load_checkpoint(model)
    items, _, _, _, decisions, _ = score_dataset(detector, folder)
    labels = np.array([item.is_anomalous for item in items])
    return float(decisions[~labels].mean()), float(decisions[labels].mean()), int((~labels).sum()), int(labels.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=[SHARED])
    parser.add_argument("--only", nargs="+")
    parser.add_argument("--max-fpr", type=float, default=0.05)
    parser.add_argument("--holdout", type=float, default=0.2)
    args = parser.parse_args()
    rows = []
    for folder in datasets(args.data):
        if args.only and folder.name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            names = sorted(p.name for p in (folder / "train" / "good").iterdir() if p.is_file())
            random.Random(0).shuffle(names)
            held = names[: max(1, round(args.holdout * len(names)))]
            for part, chosen in (("fit", names[len(held) :]), ("held", held)):
                (work / part).mkdir()
                for name in chosen:
                    shutil.copy(folder / "train" / "good" / name, work / part / name)
            model = work / "model.pt"
            train(work / "fit", load_config(None, []), model)
            before = rates(model, folder)
            report = set_thresholds(model, work / "held", work / "new.pt", args.max_fpr, None)
            after = rates(work / "new.pt", folder)
        row = (folder.name, len(held), report.normal_flagged, *before, *after)
        rows.append(row)
        print(
            f"{folder.name}: held {len(held)}, calibrated FPR {before[0]:.3f} recall {before[1]:.3f};"
            f" --max-fpr {args.max_fpr}: FPR {after[0]:.3f} recall {after[1]:.3f}",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"\n| set | held-out normal images | flagged there | test FPR, calibrated | recall, calibrated"
        f" | test FPR, --max-fpr {args.max_fpr:g} | recall, --max-fpr {args.max_fpr:g} | FPR − target |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, held, flagged, fpr0, rec0, good, bad, fpr1, rec1, _, _ in rows:
        print(
            f"| {name} | {held} | {flagged} | {fpr0:.0%} ({good}) | {rec0:.0%} ({bad}) | {fpr1:.0%} | {rec1:.0%}"
            f" | {fpr1 - args.max_fpr:+.3f} |"
        )


if __name__ == "__main__":
    main()
