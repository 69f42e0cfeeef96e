"""`lista export`: the detector's forward pass (inference.DetectorForward) traced into one
ONNX graph by torch.onnx.export, with dynamic height and width.

The graph maps a working-size image and a tile of it (the image itself when it fits in one
tile) to the tile's smoothed anomaly map; what comes before and after it (channels, the
resize to the working size, tiles, edge and level damping, the resize back, the image score)
is numpy code both runtimes call (postprocess.py, tiling.py), described by the metadata.
What the trace cannot express exactly is refused (`unsupported`), never approximated.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import torch

from ... import __version__
from ...errors import ListaError
from ...io.imageio import atomic_write
from ..scoring.detector import Detector
from ..scoring.inference import DetectorForward
from ..scoring.pixel_maps import line_radius
from .onnx_model import FORMAT, FORMAT_VERSION

OPSET = 18


class ExportError(ListaError):
    """A model the export cannot express exactly, or a missing ONNX package."""


def require_onnx() -> None:
    """Raise ExportError with one line when the optional ONNX packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ExportError("exporting needs the onnx package: pip install 'lista-cli[onnx]'") from None


def unsupported(detector: Detector) -> str | None:
    """Why this detector cannot be exported exactly, or None when it can."""
    for scale in detector.scales:
        if scale.model.background != "global":
            return f"model.background is {scale.model.background!r} (only 'global' exports)"
    return None


def min_side(detector: Detector) -> int:
    """The least side (px at the working size) the graph scores: one patch at the coarsest
    scale, and more than the smoothing's reflected border (at half resolution for the
    oriented smoothing of S)."""
    cfg = detector.config
    coarsest = max(s.factor for s in detector.scales)
    sigma = max(cfg.score.smooth_sigma, cfg.score.code_smooth_sigma)
    radius = max(1, math.ceil(3 * sigma)) if sigma > 0 else 0
    if detector.calibration.sparse_smoothing == "oriented":
        radius = max(radius, 2 * line_radius())
    return max((cfg.patch.size - 1) * coarsest + 1, radius + 1)


def metadata(detector: Detector) -> dict[str, str]:
    """What the runner needs besides the graph: the sizes it scores, the tile rule, the
    post-processing, the thresholds and the inference config."""
    size = detector.config.data.image_size
    rule = detector.tile_rule
    values = {
        "format": f"{FORMAT} {FORMAT_VERSION}",
        "lista_version": __version__,
        "channels": detector.channels,
        "image_size": size if isinstance(size, int) else "",
        "working_scale": "" if detector.working_scale is None else repr(detector.working_scale),
        "min_side": min_side(detector),
        "tile": json.dumps([rule.tile, rule.margin]),
        "finish": detector.finish.to_json(),
        "min_region": detector.config.score.min_region,
        "threshold": repr(detector.threshold),
        "pixel_threshold": repr(detector.pixel_threshold),
        "config": json.dumps(detector.config.to_dict(), sort_keys=True),
    }
    return {key: str(value) for key, value in values.items()}


def build(detector: Detector):
    """The detector's forward pass traced to an onnx.ModelProto (ExportError if it cannot be exact)."""
    require_onnx()
    import onnx

    reason = unsupported(detector)
    if reason is not None:
        raise ExportError(f"cannot export this model exactly: {reason}")
    detector = detector.cpu().eval()
    side = min_side(detector)
    height, width = torch.export.Dim("height", min=side), torch.export.Dim("width", min=side)
    tile_height, tile_width = torch.export.Dim("tile_height", min=side), torch.export.Dim("tile_width", min=side)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, detector.channels, side + 13, side + 17, generator=generator)
    tile = image[..., 2:, 3:].contiguous()
    quiet = io.StringIO()  # the exporter prints its progress on stdout
    with torch.no_grad(), contextlib.redirect_stdout(quiet):
        program = torch.onnx.export(
            DetectorForward(detector),
            (image, tile),
            input_names=["image", "tile"],
            output_names=["anomaly_map"],
            dynamic_shapes={"image": {2: height, 3: width}, "tile": {2: tile_height, 3: tile_width}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    model = program.model_proto
    model.doc_string = (
        "lista texture defect detector (traced from its PyTorch forward pass). Inputs: the image at the"
        " working size, float32 (1, channels, height, width) in [0, 1], and a tile of it (the image"
        " itself when it fits in one tile). Output: the tile's smoothed anomaly map (tile height, width)."
        " lista_cli.detection.export.onnx_model.OnnxDetector adds what comes before and after (metadata)."
    )
    onnx.helper.set_model_props(model, metadata(detector))
    return model


def export(detector: Detector, out: str | Path) -> Path:
    """Write the detector's ONNX graph to `out` atomically; returns the path."""
    model = build(detector)
    out = Path(out)
    atomic_write(out, lambda tmp: tmp.write_bytes(model.SerializeToString()))
    return out
