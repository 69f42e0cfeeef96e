"""The output folder of a batch (detect, deblur): checked before any work, and its failures file."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from ..errors import ListaError
from .imageio import atomic_write
from .inputs import shard_suffix


class OutputError(ListaError):
    """The output folder cannot be used (exit code 1)."""


def check_output_dir(out_dir: Path) -> None:
    """Create `out_dir` and prove it is writable, before any work starts."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".lista-probe-", dir=out_dir)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{out_dir}: output folder is not writable ({exc.strerror or exc})") from None


def failures_path(out_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    return out_dir / f"failures{shard_suffix(shard)}.csv"


def write_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "error"])
    writer.writerows(failures)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
