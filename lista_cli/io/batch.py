"""`lista detect`: score images with a trained model, write maps, masks, a scores file and a
regions file.

Resumable: every output file is written atomically, the raw map last; then the image's
region rows are appended to the regions file and its row to the scores file, each flushed.
With `skip_existing`, images that have a scores row and all three files are not scored
again, and region rows of images without a scores row (a run killed in between) are dropped.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..detection.regions import REGION_COLUMNS
from .imageio import ImageError, atomic_write, read_image
from .inputs import InputImage, shard_suffix
from .outputs import OutputError, check_output_dir, failures_path, write_failures
from .writer import output_paths, write_outputs

if TYPE_CHECKING:  # the batch runner also runs exported models (onnx_model), without torch
    from ..detection.detector import Detector
    from ..detection.onnx_model import OnnxDetector

SCORE_COLUMNS = ["image", "score", "normalized_score", "anomalous", "heatmap", "mask", "map"]
REGION_FILE_COLUMNS = ["image", "region", *REGION_COLUMNS]


@dataclass
class DetectSummary:
    processed: int = 0
    skipped: int = 0
    anomalous: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def scores_path(out_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    return out_dir / f"scores{shard_suffix(shard)}.csv"


def regions_path(out_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    return out_dir / f"regions{shard_suffix(shard)}.csv"


def _open_regions(path: Path, done: set[str]) -> io.TextIOWrapper:
    """Open the regions file for appending, keeping only the rows of images in `done` (those
    with a scores row); without `done` (a fresh run) start a new file."""
    rows: list[list[str]] = []
    if done and path.exists():
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            if next(reader, None) != REGION_FILE_COLUMNS:
                raise OutputError(f"{path}: exists but is not a lista regions file; remove it or choose another --out")
            rows = [row for row in reader if len(row) == len(REGION_FILE_COLUMNS) and row[0] in done]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([REGION_FILE_COLUMNS, *rows])
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
    return open(path, "a", newline="", encoding="utf-8")


def _open_scores(path: Path, resume: bool) -> tuple[io.TextIOWrapper, set[str]]:
    """Open the scores file for appending; on resume keep its complete rows and return their images."""
    done: set[str] = set()
    if resume and path.exists():
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # a row cut off by a kill: drop it
            text = text[: text.rfind("\n") + 1]
            atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        rows = list(csv.DictReader(io.StringIO(text)))
        if text and (not rows and not text.startswith("image,")):
            raise OutputError(f"{path}: exists but is not a lista scores file; remove it or choose another --out")
        done = {row["image"] for row in rows}
        if text:
            return open(path, "a", newline="", encoding="utf-8"), done
    handle = open(path, "w", newline="", encoding="utf-8")
    csv.writer(handle).writerow(SCORE_COLUMNS)
    handle.flush()
    return handle, done


def _complete(paths: dict[str, Path]) -> bool:
    return all(p.is_file() for p in paths.values())


def remove_stale_temporaries(out_dir: Path, images: list[InputImage]) -> int:
    """Delete temporary files a killed run left for these images' outputs (never another shard's)."""
    mine = {path.name for item in images for path in output_paths(out_dir, item.name).values()}
    removed = 0
    for tmp in out_dir.rglob(".*.tmp"):
        target = tmp.name[1:].rsplit(".", 2)[0]  # '.<name>.<random>.tmp' -> '<name>'
        if target in mine:
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def detect(
    detector: Detector | OnnxDetector,
    images: list[InputImage],
    out_dir: Path,
    batch: int = 16,
    shard: tuple[int, int] | None = None,
    skip_existing: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> DetectSummary:
    """Score every image; write its outputs and one scores row as soon as it is done.

    A bad image is recorded as a failure and the batch goes on."""
    started = time.perf_counter()
    check_output_dir(out_dir)
    run = _Run(detector, out_dir, DetectSummary(), on_failure, on_warning)
    if skip_existing:
        remove_stale_temporaries(out_dir, images)
    handle, done = _open_scores(scores_path(out_dir, shard), skip_existing)
    with handle, _open_regions(regions_path(out_dir, shard), done) as region_handle:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            loaded = run.load(chunk, done if skip_existing else set())
            results = detector.detect_batch([array for _, array, _ in loaded]) if loaded else []
            for (item, array, paths), result in zip(loaded, results, strict=True):
                row = run.write(item, array, paths, result, handle, region_handle)
                if on_result:
                    on_result(row)
            if on_progress:
                on_progress(len(chunk))
    run.summary.seconds = time.perf_counter() - started
    return run.summary


class _Run:
    """One detect run's state: the detector, the output folder, the summary so far."""

    def __init__(self, detector, out_dir: Path, summary: DetectSummary, on_failure, on_warning) -> None:
        self.detector, self.out_dir, self.summary = detector, out_dir, summary
        self.on_failure, self.on_warning = on_failure, on_warning
        self.threshold = detector.threshold
        self.out_root = out_dir.resolve()
        self.warned: set[int] = set()

    def fail(self, item: InputImage, message: str) -> None:
        self.summary.failures.append((str(item.path), message))
        if self.on_failure:
            self.on_failure(str(item.path), message)

    def load(self, chunk: list[InputImage], done: set[str]) -> list[tuple[InputImage, Any, dict[str, Path]]]:
        """The images of `chunk` to score, read and checked; the others skipped (done
        before) or recorded as failures."""
        loaded = []
        for item in chunk:
            paths = output_paths(self.out_dir, item.name)
            if not all(p.resolve().is_relative_to(self.out_root) for p in paths.values()):
                self.fail(item, f"{item.path}: output name '{item.name}' would leave the output folder")
                continue
            if str(item.path) in done and _complete(paths):
                self.summary.skipped += 1
                continue
            try:
                array = read_image(item.path)
                self.detector.check_size(array, item.path)
            except ImageError as exc:
                self.fail(item, str(exc))
                continue
            channels = array.shape[-1]
            if channels != self.detector.channels and channels not in self.warned:
                self.warned.add(channels)
                if self.on_warning:
                    kinds = {1: "gray", 3: "colour"}
                    self.on_warning(
                        f"converting {kinds[channels]} images to the model's"
                        f" {kinds[self.detector.channels]} (first: {item.path})"
                    )
            loaded.append((item, array, paths))
        return loaded

    def write(self, item: InputImage, array, paths: dict[str, Path], result, handle, region_handle) -> dict[str, Any]:
        """Write one image's files, then its region rows, then its scores row (each flushed);
        -> the row (with its regions) for --json."""
        write_outputs(paths, array, result.anomaly_map, self.threshold, result.mask)
        regions = [region.as_dict() for region in result.regions]
        row = {
            "image": str(item.path),
            "score": round(result.score, 8),
            "normalized_score": round(result.normalized_score, 6),
            "anomalous": bool(result.anomalous),
            **{key: path.relative_to(self.out_dir).as_posix() for key, path in paths.items()},
        }
        csv.writer(region_handle).writerows(
            [str(item.path), number, *(region[c] for c in REGION_COLUMNS)]
            for number, region in enumerate(regions, start=1)
        )
        region_handle.flush()
        csv.writer(handle).writerow([row[c] for c in SCORE_COLUMNS])
        handle.flush()
        self.summary.processed += 1
        self.summary.anomalous += int(result.anomalous)
        return {**row, "regions": regions}


def merge_scores(out_dir: Path) -> tuple[int, int]:
    """Join scores.shard-I-of-N.csv (and failures) into scores.csv; every shard must be there.

    Returns (rows, shards). An image in two shards' files is an error."""
    files = sorted(out_dir.glob("scores.shard-*-of-*.csv"))
    if not files:
        raise OutputError(f"{out_dir}: no scores.shard-I-of-N.csv files to merge")
    totals = {f.stem.rsplit("-of-", 1)[1] for f in files}
    if len(totals) != 1:
        raise OutputError(f"{out_dir}: shard files from different splits ({', '.join(sorted(totals))} shards)")
    total = int(totals.pop())
    missing = [i for i in range(total) if not scores_path(out_dir, (i, total)).exists()]
    if missing:
        raise OutputError(f"{out_dir}: shard(s) {', '.join(map(str, missing))} of {total} have no scores file yet")
    rows: dict[str, list[str]] = {}
    for index in range(total):
        path = scores_path(out_dir, (index, total))
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header != SCORE_COLUMNS:
                raise OutputError(f"{path}: not a lista scores file (header {header})")
            for row in reader:
                if len(row) != len(SCORE_COLUMNS):
                    continue  # a row cut off by a kill; the image has no complete outputs row
                if row[0] in rows and rows[row[0]] != row:
                    raise OutputError(f"{path}: {row[0]} is scored in more than one shard")
                rows[row[0]] = row
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SCORE_COLUMNS)
    writer.writerows(sorted(rows.values()))
    atomic_write(scores_path(out_dir), lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
    _merge_regions(out_dir, total, set(rows))
    failures = []
    for index in range(total):
        path = failures_path(out_dir, (index, total))
        if path.exists():
            with open(path, newline="", encoding="utf-8") as handle:
                failures.extend(list(csv.reader(handle))[1:])
    if failures:
        write_failures(failures_path(out_dir), [tuple(f) for f in failures])
    return len(rows), total


def _merge_regions(out_dir: Path, total: int, scored: set[str]) -> None:
    """Join regions.shard-I-of-N.csv into regions.csv: the rows of images that have a scores
    row, in image order (shards from before regions files have none)."""
    rows: list[list[str]] = []
    for index in range(total):
        path = regions_path(out_dir, (index, total))
        if not path.exists():
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            if next(reader, None) != REGION_FILE_COLUMNS:
                raise OutputError(f"{path}: not a lista regions file")
            rows.extend(row for row in reader if len(row) == len(REGION_FILE_COLUMNS) and row[0] in scored)
    rows.sort(key=lambda row: (row[0], int(row[1])))
    buffer = io.StringIO()
    csv.writer(buffer).writerows([REGION_FILE_COLUMNS, *rows])
    atomic_write(regions_path(out_dir), lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
