"""An output folder of `lista detect` is the record of one model's run: its manifest names the
model (file hash, thresholds, config digest, lista version), and a lock keeps two runs from
writing the same scores file at once.

The manifest, `DIR/lista-manifest.json`, is written by the first run into the folder and never
changed; every later run (appending, `--skip-existing`, another shard) must score with the same
model and thresholds, or it is refused before any image is read. The lock is `fcntl.flock` on
`DIR/.lista.lock`: a whole run holds it exclusively, a shard (`--shard I/N`) holds it shared
plus `DIR/.lista.shard-I-of-N.lock` exclusively, so N shards run side by side while a second
run of the same shard, or a whole run beside shards, is refused. The kernel drops the locks
when a process ends, however it ends (`kill -9` too).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import OutputError, os_problem, write_error
from .inputs import shard_suffix

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: no lock there
    fcntl = None

MANIFEST = "lista-manifest.json"
LOCK = ".lista.lock"
FORMAT = "lista-detect-output"
# The fields two runs must share to write into one folder.
SAME_RUN = ("model_sha256", "config_sha256", "threshold", "pixel_threshold")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(detector: Any, model_path: Path | None) -> dict[str, Any]:
    """What makes a run's scores comparable: the model file's hash, its config's digest and
    the thresholds this run applies (after --threshold)."""
    config = detector.config
    config = config.to_dict() if hasattr(config, "to_dict") else config
    text = json.dumps(config, sort_keys=True, default=str)
    return {
        "model": None if model_path is None else str(model_path),
        "model_sha256": None if model_path is None else file_sha256(model_path),
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "threshold": round(float(detector.threshold), 8),
        "pixel_threshold": round(float(detector.pixel_threshold), 8),
    }


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputError(f"{path}: unreadable manifest ({exc}); remove it or choose another --out") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OutputError(f"{path}: not a lista manifest; remove it or choose another --out")
    return manifest


def _differences(manifest: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    names = {
        "model_sha256": "model file",
        "config_sha256": "model config",
        "threshold": "image threshold",
        "pixel_threshold": "mask threshold",
    }
    out = []
    for key in SAME_RUN:
        before, now = manifest.get(key), identity.get(key)
        if before is None or now is None or before == now:
            continue  # a run without a model file (a direct call) cannot compare its hash
        if key.endswith("sha256"):
            out.append(f"{names[key]} {str(before)[:12]} there, {str(now)[:12]} now")
        else:
            out.append(f"{names[key]} {before:.6g} there, {now:.6g} now")
    return out


def check_manifest(out_dir: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Write the folder's manifest if it has none; else refuse a run with another model or
    thresholds (OutputError naming what differs). -> the manifest in force."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        manifest = {"format": FORMAT, "lista_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        manifest.update(identity)
        if _create_once(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n"):
            return manifest
        manifest = read_manifest(out_dir) or manifest  # a shard started at the same moment wrote it
    differences = _differences(manifest, identity)
    if differences:
        raise OutputError(
            f"{out_dir}: holds the results of another model or threshold ({'; '.join(differences)});"
            " choose another --out, or remove the folder to start it again"
        )
    return manifest


def _create_once(path: Path, text: str) -> bool:
    """Write `path` only if no file is there, atomically (a link never replaces a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _flock(stack: ExitStack, path: Path, shared: bool, busy: str) -> None:
    try:
        handle = stack.enter_context(open(path, "a+b"))
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the lock file ({os_problem(exc)})") from None
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputError(busy) from None
    except OSError:  # a file system without locks (some network mounts): run unlocked
        return


@contextmanager
def folder_lock(out_dir: Path, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold the output folder for one run (exclusively) or one shard (the folder shared, the
    shard exclusively); OutputError at once if another run holds it."""
    if fcntl is None:
        yield
        return
    busy = f"{out_dir}: another lista run is writing into this folder; wait for it to finish or choose another --out"
    with ExitStack() as stack:
        _flock(stack, out_dir / LOCK, shard is not None, busy)
        if shard is not None:
            busy = f"{out_dir}: shard {shard[0]}/{shard[1]} is already being written by another lista run"
            _flock(stack, out_dir / f".lista{shard_suffix(shard)}.lock", False, busy)
        yield
