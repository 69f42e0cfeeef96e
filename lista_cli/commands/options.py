"""Options shared by the commands, and the helpers that set up torch, pick the device and
load a model (a checkpoint or an exported ONNX file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import report_failure

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (see configs/default.yaml).")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config key: --set train.steps=100 (repeatable).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages on stderr, only errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="CPU threads for torch (0 = all cores).", min=0)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps; auto uses a GPU when present.")]


def setup_torch(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def pick_device(name: str) -> str:
    import torch

    from ..errors import ListaError

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ListaError("--device cuda: no CUDA GPU is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ListaError("--device mps: no Apple GPU is available")
    if name not in ("cpu", "cuda", "mps"):
        raise ListaError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    return name


def load_model(path: Path, device: str, threads: int):
    """A checkpoint as a Detector, or an exported MODEL.onnx as an OnnxDetector (ONNX Runtime
    on the CPU, no torch)."""
    if path.suffix.lower() == ".onnx":
        from ..detection.export.onnx_model import OnnxDetector
        from ..errors import ListaError

        if device not in ("auto", "cpu"):
            raise ListaError(f"--device {device}: an exported model runs on the CPU (ONNX Runtime)")
        return OnnxDetector(path, threads)
    setup_torch(threads)
    from ..detection.scoring.checkpoint import load_checkpoint

    return load_checkpoint(path, pick_device(device))


RecursiveOpt = Annotated[bool, typer.Option("--recursive/--no-recursive", help="Search folders recursively.")]
ExtOpt = Annotated[
    str | None,
    typer.Option("--ext", help="Only these extensions in folders and globs, e.g. png,jpg (default: all)."),
]
PsfOpt = Annotated[
    str,
    typer.Option("--psf", help="gaussian:SIGMA, box:N, motion:LENGTH,ANGLE, kernel:v1,v2,... or a PSF image file."),
]
BoundaryOpt = Annotated[
    str, typer.Option("--boundary", help="reflect (real camera: mirrored edges) or periodic (wrap-around).")
]


def gather_inputs(inputs: list[str], recursive: bool, ext: str | None, out: Path | None = None):
    """Collect images (never the outputs lista wrote into `out`); inputs naming nothing are
    reported and fatal only when nothing is left."""
    from ..io.inputs import InputError, collect_inputs, parse_extensions

    found = collect_inputs(inputs, recursive=recursive, extensions=parse_extensions(ext), out_dir=out)
    if not found.images:
        reasons = "; ".join(message for _, message in found.problems) or "no inputs"
        raise InputError(f"no images to process: {reasons}")
    for _, message in found.problems:
        report_failure("", message)
    return found
