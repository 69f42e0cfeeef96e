"""The errors a user can cause; the CLI prints each as one line, exit 1."""

from __future__ import annotations

import errno


class ListaError(ValueError):
    """A problem with the user's input, config, model or output folder (exit code 1)."""


class OutputError(ListaError):
    """An output file or folder that cannot be written (exit code 1); the message names it."""


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the file-size limit or the file system's)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}


SHORT_WRITE = "the write stopped short (no space left on the device, or a file-size limit)"


def os_problem(exc: OSError) -> str:
    """What an OSError means, in a few words: 'no space left on the device'."""
    if exc.errno is None and "requested and" in str(exc):  # numpy's short write: '15600 requested and 0 written'
        return SHORT_WRITE
    return _REASONS.get(exc.errno) or exc.strerror or str(exc)


def write_error(path: object, exc: OSError) -> OutputError:
    """The one-line error for a failed write of `path`."""
    return OutputError(f"{path}: cannot write: {os_problem(exc)}")
