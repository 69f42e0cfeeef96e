"""The output folder of a batch (detect, deblur): checked before any work, and its failures file."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from ..errors import OutputError, os_problem
from .imageio import atomic_write
from .inputs import shard_suffix

__all__ = ["OutputError", "check_output_dir", "check_output_file", "failures_path", "merge_failures", "write_failures"]


def check_output_dir(out_dir: Path) -> None:
    """Create `out_dir` and prove it is writable, before any work starts."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: is a file, not an output folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".lista-probe-", dir=out_dir)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{out_dir}: output folder is not writable ({os_problem(exc)})") from None


def check_output_file(path: Path, option: str = "--out") -> None:
    """Prove a file can be written at `path` (not a folder; its folder made and writable),
    before any work starts. Raises OutputError naming the option and the path."""
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise OutputError(f"{option} {path}: exists and is not a regular file")
    folder = path.parent
    blocking = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    if folder.exists() and not folder.is_dir():
        blocking = folder
    if blocking is not None:
        raise OutputError(f"{option} {path}: a part of the path is not a folder ({blocking} is a file)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".lista-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write in {folder} ({os_problem(exc)})") from None


def failures_path(out_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    return out_dir / f"failures{shard_suffix(shard)}.csv"


def merge_failures(path: Path, failures: list[tuple[str, str]], attempted: set[str]) -> None:
    """Write this run's failures into `path`, keeping the rows of earlier runs for images this
    run did not try; a file left with no row is removed."""
    earlier: list[tuple[str, str]] = []
    if path.is_file():
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
        except (OSError, UnicodeDecodeError, csv.Error):
            rows = []
        if rows and rows[0] == ["image", "error"]:
            earlier = [(r[0], r[1]) for r in rows[1:] if len(r) == 2 and r[0] not in attempted]
    mine = {image for image, _ in failures}
    merged = [row for row in earlier if row[0] not in mine] + list(failures)
    if merged:
        write_failures(path, merged)
    elif path.is_file():
        path.unlink()


def write_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "error"])
    writer.writerows(failures)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
