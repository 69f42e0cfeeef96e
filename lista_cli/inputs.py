"""Turning command-line inputs (files, folders, globs, '-') into images and output paths."""

from __future__ import annotations

import glob
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath

from .errors import ListaError
from .imageio import IMAGE_EXTENSIONS


class InputError(ListaError):
    """A command-line input that names nothing usable (exit code 1)."""


@dataclass(frozen=True)
class InputImage:
    """An image to process and where its outputs go, relative to the output folder."""

    path: Path
    relative: PurePath  # output stem path without suffix, e.g. sub/dir/img

    @property
    def name(self) -> str:
        return self.relative.as_posix()


def _is_image(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.suffix.lower() in extensions and not path.name.startswith(".")


def _from_folder(folder: Path, recursive: bool, extensions: tuple[str, ...]) -> list[InputImage]:
    pattern = "**/*" if recursive else "*"
    found = [p for p in folder.glob(pattern) if p.is_file() and _is_image(p, extensions)]
    return [InputImage(p, p.relative_to(folder).with_suffix("")) for p in sorted(found)]


def collect_inputs(
    items: list[str],
    recursive: bool = True,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    stdin_lines: list[str] | None = None,
) -> list[InputImage]:
    """Expand files, folders (recursively), globs and '-' (paths on stdin) into images.

    A file named directly maps to its stem at the top of the output folder; an image found
    in a folder keeps its path relative to that folder; an image matched by a glob keeps
    its path relative to the glob's fixed leading folder. Two inputs that would write the
    same output stem are an error.
    """
    images: list[InputImage] = []
    for item in items:
        if item == "-":
            lines = stdin_lines if stdin_lines is not None else sys.stdin.read().splitlines()
            for line in lines:
                if line.strip():
                    path = Path(line.strip())
                    images.append(InputImage(path, PurePath(path.stem)))
            continue
        path = Path(item)
        if path.is_dir():
            found = _from_folder(path, recursive, extensions)
            if not found:
                raise InputError(f"{item}: folder contains no images ({', '.join(extensions)})")
            images.extend(found)
        elif glob.has_magic(item):
            root = Path(*PurePath(item).parts[: _fixed_depth(item)] or ["."])
            matches = sorted(
                Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file() and _is_image(Path(m), extensions)
            )
            if not matches:
                raise InputError(f"{item}: pattern matches no images")
            images.extend(InputImage(m, m.relative_to(root).with_suffix("")) for m in matches)
        elif path.exists() or path.is_symlink():
            images.append(InputImage(path, PurePath(path.stem)))
        else:
            raise InputError(f"{item}: no such file or folder")
    _check_unique(images)
    return images


def _fixed_depth(pattern: str) -> int:
    """How many leading path parts of a glob pattern have no wildcard."""
    parts = PurePath(pattern).parts
    for depth, part in enumerate(parts):
        if glob.has_magic(part):
            return depth
    return len(parts)


def _check_unique(images: list[InputImage]) -> None:
    seen: dict[str, Path] = {}
    for image in images:
        key = image.name.lower()
        if key in seen and seen[key].resolve() != image.path.resolve():
            raise InputError(
                f"{image.path} and {seen[key]} would both write outputs named '{image.name}';"
                " rename one or pass their common folder instead"
            )
        seen[key] = image.path
    # Same file given twice: keep one.
    unique: dict[str, InputImage] = {}
    for image in images:
        unique.setdefault(image.name.lower(), image)
    images[:] = list(unique.values())
