"""One self-describing checkpoint file: what inference needs, and the version that wrote it.

The payload is the detector's state_dict (each scale's layers, mean, subspace and code bank,
and as extra state the scale factors, channels, working-size factor and
calibration), the inference-relevant configuration (data, patch, model and score: not the
training schedule) and the format and lista versions. Saved with torch.save, loaded with
`weights_only=True`, so loading never runs code from the file; written atomically so a
killed run never leaves half a checkpoint. Files of other formats are refused with one line.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ... import __version__
from ...config import Config, ConfigError, from_dict
from ...errors import ListaError
from ...io.imageio import atomic_write
from .detector import Detector

FORMAT = "lista-checkpoint"
FORMAT_VERSION = 9  # 9: inference state and config only; formats 1-8 were read by lista 0.1.0
INFERENCE_SECTIONS = ("data", "patch", "model", "score")  # of the config: what inference reads


class CheckpointError(ListaError):
    """A model file that cannot be used (exit code 1)."""


def save_checkpoint(path: str | Path, detector: Detector, extra: dict[str, Any] | None = None) -> None:
    """The detector's state and inference config, in one file written atomically. `extra`:
    what training reported (not read back by inference)."""
    state = {
        key: value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
        for key, value in detector.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lista_version": __version__,
        "config": inference_config(detector.config),
        "state": state,
        "extra": extra or {},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _check(detector: Detector) -> None:
    """Raise ValueError when the state cannot be this config's model or is not finite."""
    cfg = detector.config
    expected = detector.channels * cfg.patch.size**2
    for scale in detector.scales:
        if scale.model.dim != expected:
            raise ValueError(
                f"its weights are for {scale.model.dim} numbers per patch, its config says"
                f" {detector.channels} x {cfg.patch.size} x {cfg.patch.size} = {expected}"
            )
    for name, value in detector.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    c = detector.calibration
    numbers = [c.threshold, *(c.map_weights or []), *c.edge_rows, *c.edge_columns, c.level_cap]
    numbers += [v for v in (c.pixel_threshold, c.level_reference) if v is not None]
    if not all(math.isfinite(float(v)) for v in numbers) or not c.threshold > 0:
        raise ValueError("its calibration (thresholds, map weights or dampings) is not finite")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Detector:
    """Load a checkpoint into a Detector, or raise CheckpointError with one line."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a model file")
    if not path.exists():
        raise CheckpointError(f"{path}: model file not found")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{path}: an exported ONNX model; only lista detect runs those, this needs the checkpoint from lista train"
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a lista checkpoint (empty file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects that would run code when loaded;"
            " it is not a lista checkpoint"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: not a lista checkpoint (truncated or corrupt file: {str(exc).splitlines()[0][:80]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lista checkpoint (no '{FORMAT}' header)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        reader = "lista 0.1.0" if isinstance(version, int) and 1 <= version <= 8 else "a newer lista"
        raise CheckpointError(
            f"{path}: checkpoint format {version} (written by lista {payload.get('lista_version')}) is read by"
            f" {reader}; this lista {__version__} reads format {FORMAT_VERSION}: retrain the model with lista train"
        )
    try:
        config = from_dict(payload["config"])
    except ConfigError as exc:  # a key a later lista removed or renamed (or a damaged file)
        raise CheckpointError(
            f"{path}: its config does not fit this lista {__version__} ({str(exc).splitlines()[0][:100]});"
            f" written by lista {payload.get('lista_version')}: retrain the model with lista train"
        ) from None
    try:
        detector = Detector.from_state(config, payload["state"])
        _check(detector)
    except (KeyError, TypeError, RuntimeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: damaged lista checkpoint ({str(exc).splitlines()[0][:140]})") from None
    return detector.to(device)


def inference_config(config: Config) -> dict[str, Any]:
    """The sections of `config` a checkpoint keeps."""
    values = config.to_dict()
    return {section: values[section] for section in INFERENCE_SECTIONS}
