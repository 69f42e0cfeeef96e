"""One self-describing checkpoint file: weights, config, mu and U, calibration, version.

Saved with torch.save, loaded with `weights_only=True`, so loading never runs code from
the file; written atomically so a killed run never leaves half a checkpoint.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import Config, ConfigError, from_dict
from ..errors import ListaError
from ..io.imageio import atomic_write
from .context import ContextBank
from .detector import Calibration, Detector, Scale
from .model import UnfoldedISTA
from .typicality import CodeBank

FORMAT = "lista-checkpoint"
# 8: each code of a bank may have a sparse divisor (sparse_levels.py; older banks have
# none and load with score.sparse_damping false); 7: the calibration holds the level
# damping's reference and cap (levels.py; older models have none and load with
# score.level_damping false); 6: the calibration names the
# smoothing of the sparse-part maps (a format 5 one is Gaussian); 5: the config and the
# detector's state_dict (Detector.from_state rebuilds it); 4: each code of a bank has a
# residual level (a third map per scale); 3: each code of a bank has a cell radius; 2: one
# model and code bank per image scale (its codes load with radius 1, plain distances);
# 1: one model, no bank. All eight load.
FORMAT_VERSION = 8
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8)


class CheckpointError(ListaError):
    """A model file that cannot be used (exit code 1)."""


def save_checkpoint(path: str | Path, detector: Detector, extra: dict[str, Any] | None = None) -> None:
    """Config + state: all a detector is, in one file written atomically."""
    state = {
        key: value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
        for key, value in detector.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lista_version": __version__,
        "config": detector.config.to_dict(),
        "state": state,
        "extra": extra or {},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _rebuild_scales(payload: dict[str, Any], config: Config) -> list[Scale]:
    # Format 1 held one model at full scale under "state" and no code bank.
    entries = payload["scales"] if payload["format_version"] >= 2 else [{"factor": 1, "state": payload["state"]}]
    config.data.scales = [int(entry["factor"]) for entry in entries]
    scales = []
    for entry in entries:
        state = entry["state"]
        model = UnfoldedISTA(state["mean"], state["basis"], config.model).requires_grad_(False)
        model.load_state_dict(state)
        bank = entry.get("bank")
        if bank is not None:
            bank = CodeBank(bank["basis"], bank["codes"], bank.get("radii"), bank.get("residual_levels"))
        scales.append(Scale(int(entry["factor"]), model.eval(), bank))
    return scales


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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects that would run code when loaded;"
            " it is not a lista checkpoint"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        reason = "truncated or corrupt" if path.stat().st_size else "empty"
        raise CheckpointError(
            f"{path}: not a lista checkpoint ({reason} file: {str(exc).splitlines()[0][:80]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lista checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint format {payload.get('format_version')} from lista"
            f" {payload.get('lista_version')} is incompatible with this lista {__version__}"
            f" (format {FORMAT_VERSION}); retrain the model"
        )
    try:
        stored = payload["config"]
        score = stored.get("score", {}) if isinstance(stored, dict) else {}
        if isinstance(score, dict) and "smooth_sigma" in score and "code_smooth_sigma" not in score:
            # written before code maps had their own smoothing: they were smoothed like the rest
            stored = {**stored, "score": {**score, "code_smooth_sigma": score["smooth_sigma"]}}
        if isinstance(score, dict) and payload["format_version"] < 7:  # before the level damping
            stored = {**stored, "score": {**stored["score"], "level_damping": False}}
        if isinstance(score, dict) and payload["format_version"] < 8:  # before the sparse divisors
            stored = {**stored, "score": {**stored["score"], "sparse_damping": False}}
        config = from_dict(stored)
        if payload["format_version"] >= 5:
            return Detector.from_state(config, payload["state"]).to(device)
        return _legacy_detector(payload, config).to(device)
    except (KeyError, TypeError, RuntimeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path}: damaged lista checkpoint ({str(exc).splitlines()[0][:100]})") from None


def _legacy_detector(payload: dict[str, Any], config: Config) -> Detector:
    """A detector from a format 1-4 checkpoint (scales, calibration and context stored apart)."""
    working_scale = payload.get("working_scale")
    context = payload.get("context")
    if context is not None:
        bank = CodeBank(context["bank"]["basis"], context["bank"]["codes"], context["bank"]["radii"])
        context = ContextBank(bank, torch.tensor(context["norms"]))
    return Detector(
        _rebuild_scales(payload, config),
        config,
        int(payload["channels"]),
        Calibration.from_dict(payload.get("calibration")),
        None if working_scale is None else float(working_scale),
        context,
    )
