"""Reading images into float arrays in [0, 1], resizing, and atomic file writes."""

from __future__ import annotations

import io
import os
import secrets
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import SHORT_WRITE, ListaError, OutputError, write_error

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


class ImageError(ListaError):
    """An input image that cannot be used; the message names the file and the problem."""


class ImageWarning(UserWarning):
    """An image that is used, but not all of it (the first frame of an animation)."""


EXIF_ORIENTATION = 0x0112


def _to_array(image: Image.Image) -> np.ndarray:
    """PIL image of any common mode -> float32 (H, W, C) in [0, 1], C = 1 or 3."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return (np.asarray(image, dtype=np.float32) / 65535.0)[..., None]
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = values.max(initial=0, where=np.isfinite(values)) if mode == "F" else values.max(initial=0)
        peak = 1.0 if mode == "F" and top <= 1.0 else (255.0 if top <= 255 else 65535.0)
        return np.clip(values / peak, 0.0, 1.0)[..., None]
    if mode in ("1", "L"):
        return (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[..., None]
    if mode in ("LA", "La"):
        return (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[..., None]
    if mode == "P":
        image = image.convert("RGBA")
    # RGB, RGBA (alpha dropped), CMYK, YCbCr, LAB, HSV, RGBa, RGBX ...
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file -> float32 (H, W, C) in [0, 1], as a viewer shows it (EXIF
    orientation applied). Raises ImageError naming the file: unreadable, corrupt, or with
    pixels that are not finite numbers. A file of several frames gives its first, with an
    ImageWarning naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                frames = getattr(image, "n_frames", 1)
                upright = _upright(image)
                # only float images can hold NaN or infinity: counted before any scaling or clipping
                bad = int(np.count_nonzero(~np.isfinite(np.asarray(upright)))) if upright.mode == "F" else 0
                array = _to_array(upright)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{path}: truncated or corrupt image ({exc})") from None
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{path}: image has no pixels")
    if bad:
        raise ImageError(f"{path}: {bad} of {array[..., 0].size} pixels are NaN or infinite; cannot score it")
    if frames > 1:
        warnings.warn(f"{path}: has {frames} frames; only the first is used", ImageWarning, stacklevel=2)
    return array


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (as viewers show it); unchanged without one."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: use the pixels as stored
        return image
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, C) -> (H, W, channels): RGB to gray by ITU-R 601 luma, gray to RGB by copying."""
    if array.shape[-1] == channels:
        return array
    if channels == 1:
        luma = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return luma[..., None]
    return np.repeat(array, 3, axis=-1)


def resized_shape(height: int, width: int, shorter_side: int | None) -> tuple[int, int]:
    """Shape after resizing so the shorter side is `shorter_side` (aspect kept); None keeps it."""
    if shorter_side is None:
        return height, width
    scale = shorter_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def working_shape(height: int, width: int, image_size: int | None, factor: float | None = None) -> tuple[int, int]:
    """The shape an image of (height, width) has at a model's resolution: scaled by `factor`
    (a size chosen at train time, the same for every image) when given, else with its
    shorter side `image_size` (None keeps it)."""
    if factor is not None:
        return max(1, round(height * factor)), max(1, round(width * factor))
    return resized_shape(height, width, image_size)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it into place.

    A new file gets the mode the umask allows (as `open` would give it); a file replaced
    keeps its mode. A failed write leaves `path` as it was and raises OutputError naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 minus the umask
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        write(tmp)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode) if path.is_file() else None
        except OSError:
            mode = None
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        if isinstance(exc, RuntimeError) and any(k in str(exc) for k in _SHORT_WRITES):  # torch.save
            raise OutputError(f"{path}: cannot write: {SHORT_WRITE}") from None
        raise


# How torch.save (its zip writer) reports a write the disk or a file-size limit cut short.
_SHORT_WRITES = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG, atomically."""
    # compress_level 1: ~5x faster to encode than the default 6, files ~10 % larger.
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG", compress_level=1))


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write an array as .npy, atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


def bit_depth(path: str | Path) -> int:
    """16 for 16-bit (and 32-bit integer) images, else 8; read from the header only."""
    try:
        with Image.open(path) as image:
            return 16 if image.mode.startswith("I") else 8
    except (OSError, ValueError):
        return 8


def save_image(path: str | Path, array: np.ndarray, bits: int = 8) -> None:
    """Write a float (H, W, C) image in [0, 1] as PNG (16-bit for gray when bits=16), atomically."""
    array = np.clip(np.asarray(array, dtype=np.float64), 0.0, 1.0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if bits == 16 and array.ndim == 2:
        values = np.round(array * 65535.0).astype(np.uint16)
        # Uncompressed: zlib saves ~13 % on a 16-bit photo (its low bits are noise) and takes
        # twice as long (512² camera image: 447 against 512 KB, 22 against 10.5 ms).
        atomic_write(path, lambda tmp: Image.fromarray(values).save(tmp, format="PNG", compress_level=0))
        return
    save_png(path, np.round(array * 255.0).astype(np.uint8))
