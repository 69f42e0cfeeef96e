"""Turning command-line inputs (files, folders, globs, '-') into images and output names."""

from __future__ import annotations

import csv
import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from ..errors import ListaError
from .imageio import IMAGE_EXTENSIONS


class InputError(ListaError):
    """Inputs that cannot be processed at all (exit code 1)."""


@dataclass(frozen=True)
class InputImage:
    """An image to process and where its outputs go, relative to the output folder."""

    path: Path
    relative: PurePath  # output stem path without suffix, e.g. sub/dir/img

    @property
    def name(self) -> str:
        return self.relative.as_posix()


@dataclass
class Inputs:
    """The images found, and one message per input that named nothing usable."""

    images: list[InputImage] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (input, message)


def parse_extensions(text: str | None) -> tuple[str, ...]:
    """'png,JPG' -> ('.png', '.jpg'); None -> every supported extension."""
    if not text:
        return IMAGE_EXTENSIONS
    extensions = tuple("." + e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())
    if not extensions:
        raise InputError(f"--ext expects a comma-separated list such as png,jpg, got {text!r}")
    return extensions


def _is_image(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.suffix.lower() in extensions and not path.name.startswith(".")


def _from_folder(folder: Path, recursive: bool, extensions: tuple[str, ...]) -> list[InputImage]:
    pattern = "**/*" if recursive else "*"
    found = [p for p in folder.glob(pattern) if (p.is_file() or p.is_symlink()) and _is_image(p, extensions)]
    return [InputImage(p, p.relative_to(folder).with_suffix("")) for p in sorted(found)]


OUTPUT_SUFFIXES = ("_heatmap.png", "_mask.png")  # what lista detect writes beside a stem


def written_outputs(out_dir: Path) -> set[Path]:
    """The image files the scores files in `out_dir` name (heatmaps and masks), resolved."""
    written: set[Path] = set()
    for scores in out_dir.glob("scores*.csv"):
        try:
            with open(scores, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    written.update((out_dir / row[k]).resolve() for k in ("heatmap", "mask") if row.get(k))
        except (OSError, UnicodeDecodeError, csv.Error):
            continue  # not a scores file lista can read: nothing it names is excluded
    return written


def _outside_outputs(images: list[InputImage], root: Path, out_dir: Path | None) -> list[InputImage]:
    """The images found under `root` that are not outputs: the output folder's subtree is left
    out when it lies inside `root`; when it is `root` itself (or holds it), the files lista
    wrote there (named in its scores files, or a heatmap or mask beside its image)."""
    if out_dir is None or not images:
        return images
    out_root, folder = out_dir.resolve(), root.resolve()
    if out_root != folder and out_root.is_relative_to(folder):
        return [i for i in images if not i.path.resolve().is_relative_to(out_root)]
    if not folder.is_relative_to(out_root):
        return images
    written = written_outputs(out_dir)
    stems = {i.path.with_suffix("") for i in images}
    kept = []
    for item in images:
        name = item.path.name
        beside = [name[: -len(s)] for s in OUTPUT_SUFFIXES if name.endswith(s)]
        if item.path.resolve() in written or any(item.path.with_name(stem) in stems for stem in beside):
            continue
        kept.append(item)
    return kept


def _fixed_depth(pattern: str) -> int:
    """How many leading path parts of a glob pattern have no wildcard."""
    parts = PurePath(pattern).parts
    for depth, part in enumerate(parts):
        if glob.has_magic(part):
            return depth
    return len(parts)


def collect_inputs(
    items: list[str],
    recursive: bool = True,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    stdin_lines: list[str] | None = None,
    out_dir: Path | None = None,
) -> Inputs:
    """Expand files, folders, globs and '-' (one path per line on stdin) into images.

    A file named directly maps to its stem at the top of the output folder; an image found
    in a folder keeps its path relative to that folder; an image matched by a glob keeps
    its path relative to the glob's fixed leading folder. An input naming nothing is a
    problem to report, not a reason to stop; two inputs that would write the same output
    name are an InputError, before any work. Folders and globs never yield what lista wrote
    into `out_dir` (see `_outside_outputs`); a file named directly is always taken.
    """
    found = Inputs()
    for item in items:
        if item == "-":
            lines = stdin_lines if stdin_lines is not None else sys.stdin.read().splitlines()
            for line in lines:
                if line.strip():
                    path = Path(line.strip())
                    found.images.append(InputImage(path, PurePath(path.stem)))
            continue
        path = Path(item)
        if path.is_dir():
            images = _outside_outputs(_from_folder(path, recursive, extensions), path, out_dir)
            if not images:
                found.problems.append((item, f"{item}: folder contains no images ({', '.join(extensions)})"))
            found.images.extend(images)
        elif glob.has_magic(item):
            root = Path(*PurePath(item).parts[: _fixed_depth(item)] or ["."])
            matches = sorted(
                Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file() and _is_image(Path(m), extensions)
            )
            matched = _outside_outputs(
                [InputImage(m, m.relative_to(root).with_suffix("")) for m in matches], root, out_dir
            )
            if not matched:
                found.problems.append((item, f"{item}: pattern matches no images"))
            found.images.extend(matched)
        elif path.exists() or path.is_symlink():
            found.images.append(InputImage(path, PurePath(path.stem)))
        else:
            found.problems.append((item, f"{item}: no such file or folder"))
    found.images = _unique(found.images)
    return found


def _unique(images: list[InputImage]) -> list[InputImage]:
    """Drop repeats of the same file; two different files with one output name are an error."""
    seen: dict[str, InputImage] = {}
    for image in images:
        key = image.name.lower()  # case-insensitive file systems would clash too
        if key in seen:
            if seen[key].path.resolve() != image.path.resolve():
                raise InputError(
                    f"{image.path} and {seen[key].path} would both write outputs named '{image.name}'"
                    " (outputs are named by the image's stem); rename one of them"
                )
            continue
        seen[key] = image
    return list(seen.values())


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' with 0 <= I < N -> (I, N)."""
    if text is None:
        return None
    index, _, total = text.partition("/")
    try:
        i, n = int(index), int(total)
    except ValueError:
        raise InputError(f"--shard expects I/N such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text}: need 0 <= I < N (shards are numbered from 0)")
    return i, n


def select_shard(images: list[InputImage], shard: tuple[int, int] | None) -> list[InputImage]:
    """Shard I of N: every N-th image of the list sorted by output name, starting at I.

    Every image lands in exactly one shard, whatever order the inputs came in."""
    if shard is None:
        return images
    index, total = shard
    ordered = sorted(images, key=lambda image: image.name)
    return ordered[index::total]


def shard_suffix(shard: tuple[int, int] | None) -> str:
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"
