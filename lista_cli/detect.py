"""`lista detect`: score images with a trained model, write maps, masks and a scores file."""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ListaError
from .imageio import ImageError, read_image
from .inputs import InputImage
from .pipeline import Detector
from .writer import output_paths, write_outputs

SCORE_COLUMNS = ["image", "score", "normalized_score", "anomalous", "heatmap", "mask", "map"]


class OutputError(ListaError):
    """The output folder cannot be used (exit code 1)."""


@dataclass
class DetectSummary:
    processed: int = 0
    anomalous: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def check_output_dir(out_dir: Path) -> None:
    """Create `out_dir` and prove it is writable, before any work starts."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".lista-probe-", dir=out_dir)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{out_dir}: output folder is not writable ({exc.strerror or exc})") from None


def detect(
    detector: Detector,
    images: list[InputImage],
    out_dir: Path,
    batch: int = 16,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> DetectSummary:
    """Score every image; write its outputs and one scores.csv row as soon as it is done.

    A bad image is recorded as a failure and the batch goes on."""
    started = time.perf_counter()
    check_output_dir(out_dir)
    summary = DetectSummary()
    threshold = detector.threshold
    with open(out_dir / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        scores = csv.writer(handle)
        scores.writerow(SCORE_COLUMNS)
        handle.flush()
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            loaded = []
            for item in chunk:
                try:
                    array = read_image(item.path)
                    detector.check_size(array, item.path)
                    loaded.append((item, array))
                except ImageError as exc:
                    summary.failures.append((str(item.path), str(exc)))
                    if on_failure:
                        on_failure(str(item.path), str(exc))
            results = detector.detect_batch([array for _, array in loaded]) if loaded else []
            for (item, array), result in zip(loaded, results, strict=True):
                paths = output_paths(out_dir, item.name)
                write_outputs(paths, array, result.anomaly_map, threshold)
                row = {
                    "image": str(item.path),
                    "score": round(result.score, 8),
                    "normalized_score": round(result.normalized_score, 6),
                    "anomalous": bool(result.anomalous),
                    **{key: str(path.relative_to(out_dir)) for key, path in paths.items()},
                }
                scores.writerow([row[c] for c in SCORE_COLUMNS])
                handle.flush()
                summary.processed += 1
                summary.anomalous += int(result.anomalous)
                if on_result:
                    on_result(row)
            if on_progress:
                on_progress(len(chunk))
    summary.seconds = time.perf_counter() - started
    return summary
