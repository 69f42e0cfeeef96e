"""`lista detect`: score images with a trained model, write maps, masks, a scores file and a
regions file.

Resumable: every output file is written atomically, the raw map last; then the image's
region rows are appended to the regions file and its row to the scores file, each flushed.
With `skip_existing`, images that have a scores row and all three files are not scored
again, and region rows of images without a scores row (a run killed in between) are dropped.
A run into a folder with rows from earlier runs keeps them (the same model only, see
manifest.py), replacing those of the images it scores again.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..detection.scoring.regions import REGION_COLUMNS
from ..errors import OutputError, write_error
from .imageio import ImageError, atomic_write, read_image
from .inputs import InputImage, shard_suffix
from .manifest import check_manifest, folder_lock, model_identity, read_manifest
from .outputs import check_output_dir, failures_path, write_failures
from .writer import output_paths, write_outputs

if TYPE_CHECKING:  # the batch runner also runs exported models (onnx_model), without torch
    from ..detection.export.onnx_model import OnnxDetector
    from ..detection.scoring.detector import Detector

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


def _read_rows(path: Path, columns: list[str], kind: str) -> list[list[str]]:
    """The complete rows of an existing lista CSV file (a row cut off by a kill is dropped);
    [] when there is none. OutputError if the file is something else."""
    if not path.exists():
        return []
    if not path.is_file():
        raise OutputError(f"{path}: exists and is not a file; remove it or choose another --out")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OutputError(f"{path}: exists but is not a lista {kind} file; remove it or choose another --out") from None
    if not text:
        return []
    text = text[: text.rfind("\n") + 1]  # a row cut off by a kill: dropped
    reader = csv.reader(io.StringIO(text))
    if next(reader, None) != columns:
        raise OutputError(f"{path}: exists but is not a lista {kind} file; remove it or choose another --out")
    return [row for row in reader if len(row) == len(columns)]


def _rewrite(path: Path, columns: list[str], rows: list[list[str]]) -> io.TextIOWrapper:
    """Write `rows` under the header atomically, then open the file for appending."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows([columns, *rows])
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
    try:
        return open(path, "a", newline="", encoding="utf-8")
    except OSError as exc:
        raise write_error(path, exc) from None


def _earlier_rows(
    out_dir: Path, scores: Path, images: list[InputImage], skip_existing: bool
) -> tuple[list[list[str]], set[str]]:
    """The rows of earlier runs this run keeps, and the images it skips (done before).

    A row stays unless this run writes the same outputs again; with `skip_existing` an image
    whose row and three files are there is not scored again (its row stays)."""
    planned = {}
    for item in images:
        paths = output_paths(out_dir, item.name)
        planned[paths["map"].relative_to(out_dir).as_posix()] = (item, paths)
    kept, done = [], set()
    for row in _read_rows(scores, SCORE_COLUMNS, "scores"):
        mine = planned.get(row[SCORE_COLUMNS.index("map")])
        if mine is None:
            kept.append(row)
        elif skip_existing and row[0] == str(mine[0].path) and _complete(mine[1]):
            kept.append(row)
            done.add(row[0])
    return kept, done


@contextmanager
def _closing(handle: io.TextIOWrapper) -> Iterator[io.TextIOWrapper]:
    """Close `handle` at the end; a failed last flush is an OutputError naming the file,
    unless an error is already on its way (that one is reported)."""
    try:
        yield handle
    finally:
        failing = sys.exc_info()[0] is not None
        try:
            handle.close()
        except OSError as exc:
            if not failing:
                raise write_error(handle.name, exc) from None


def _append(handle: io.TextIOWrapper, rows: list[list[Any]]) -> None:
    try:
        csv.writer(handle).writerows(rows)
        handle.flush()
    except OSError as exc:
        raise write_error(handle.name, exc) from None


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
    model_path: Path | None = None,
) -> DetectSummary:
    """Score every image; write its outputs and one scores row as soon as it is done.

    The folder is locked for the run and its manifest checked (same model and thresholds as
    the runs before); rows of earlier runs stay unless this run scores the same outputs
    again. A bad image is recorded as a failure and the batch goes on; a failed write stops
    it (OutputError naming the file), keeping every row written before."""
    started = time.perf_counter()
    check_output_dir(out_dir)
    run = _Run(detector, out_dir, DetectSummary(), on_failure, on_warning)
    scores = scores_path(out_dir, shard)
    with folder_lock(out_dir, shard):
        if read_manifest(out_dir) is None and scores.is_file() and on_warning:
            on_warning(f"{out_dir}: its scores come from a lista without manifests; taken as this model's")
        check_manifest(out_dir, model_identity(detector, model_path))
        if skip_existing:
            remove_stale_temporaries(out_dir, images)
        kept, done = _earlier_rows(out_dir, scores, images, skip_existing)
        kept_images = {row[0] for row in kept}
        regions = regions_path(out_dir, shard)
        region_rows = [row for row in _read_rows(regions, REGION_FILE_COLUMNS, "regions") if row[0] in kept_images]
        try:
            with (
                _closing(_rewrite(scores, SCORE_COLUMNS, kept)) as handle,
                _closing(_rewrite(regions, REGION_FILE_COLUMNS, region_rows)) as region_handle,
            ):
                for start in range(0, len(images), batch):
                    chunk = images[start : start + batch]
                    loaded = run.load(chunk, done)
                    results = detector.detect_batch([array for _, array, _ in loaded]) if loaded else []
                    for (item, array, paths), result in zip(loaded, results, strict=True):
                        row = run.write(item, array, paths, result, handle, region_handle)
                        if on_result:
                            on_result(row)
                    if on_progress:
                        on_progress(len(chunk))
        except OutputError as exc:
            done_now = run.summary.processed + run.summary.skipped
            raise OutputError(
                f"{exc}; the {done_now} images done before are kept in {scores}: free the space or fix the"
                " folder, then rerun with --skip-existing"
            ) from None
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
        config = detector.config  # a Config, or the exported model's dict
        self.patch = int(config["patch"]["size"] if isinstance(config, dict) else config.patch.size)

    def fail(self, item: InputImage, message: str) -> None:
        self.summary.failures.append((str(item.path), message))
        if self.on_failure:
            self.on_failure(str(item.path), message)

    def check_native_size(self, array, path: Path) -> None:
        """An image must hold one patch at its own size: a smaller one would only be scored
        after upscaling its few pixels to the model's resolution."""
        patch, (height, width) = self.patch, array.shape[:2]
        if min(height, width) < patch:
            raise ImageError(f"{path}: image is {width}x{height} px, smaller than one {patch}x{patch} patch")

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
                self.check_native_size(array, item.path)
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
        _append(
            region_handle,
            [
                [str(item.path), number, *(region[c] for c in REGION_COLUMNS)]
                for number, region in enumerate(regions, start=1)
            ],
        )
        _append(handle, [[row[c] for c in SCORE_COLUMNS]])
        self.summary.processed += 1
        self.summary.anomalous += int(result.anomalous)
        return {**row, "regions": regions}


def merge_scores(out_dir: Path) -> tuple[int, int]:
    """Join scores.shard-I-of-N.csv (and failures) into scores.csv; every shard must be there.
    Rows scores.csv holds from earlier runs stay, unless a shard scored the same outputs.

    Returns (rows, shards). An image in two shards' files is an error. Refused while a run
    writes into the folder."""
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: no such folder")
    with folder_lock(out_dir):
        return _merge_shards(out_dir)


def _merge_shards(out_dir: Path) -> tuple[int, int]:
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
    maps = {row[SCORE_COLUMNS.index("map")] for row in rows.values()}
    earlier = [
        row
        for row in _read_rows(scores_path(out_dir), SCORE_COLUMNS, "scores")
        if row[0] not in rows and row[SCORE_COLUMNS.index("map")] not in maps
    ]
    earlier_regions = [
        row
        for row in _read_rows(regions_path(out_dir), REGION_FILE_COLUMNS, "regions")
        if row[0] in {r[0] for r in earlier}
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SCORE_COLUMNS)
    writer.writerows(sorted([*rows.values(), *earlier]))
    atomic_write(scores_path(out_dir), lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
    _merge_regions(out_dir, total, set(rows), earlier_regions)
    failures = []
    for index in range(total):
        path = failures_path(out_dir, (index, total))
        if path.exists():
            with open(path, newline="", encoding="utf-8") as handle:
                failures.extend(list(csv.reader(handle))[1:])
    if failures:
        write_failures(failures_path(out_dir), [tuple(f) for f in failures])
    return len(rows), total


def _merge_regions(out_dir: Path, total: int, scored: set[str], earlier: list[list[str]]) -> None:
    """Join regions.shard-I-of-N.csv into regions.csv: the rows of images that have a scores
    row, and the `earlier` rows kept, in image order (shards from before regions files have none)."""
    rows: list[list[str]] = list(earlier)
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
