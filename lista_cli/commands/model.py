"""Commands that make, tune, check and export a model: train, threshold, eval, export, config."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..console import (
    errors,
    print_eval_table,
    print_json,
    print_threshold_report,
    print_train_summary,
    progress_bar,
    say,
)
from .options import ConfigOpt, DebugOpt, DeviceOpt, JsonOpt, QuietOpt, SetOpt, ThreadsOpt, pick_device, setup_torch


def train(
    data_dir: Annotated[
        Path, typer.Argument(help="Folder of normal images, or an MVTec category folder (uses train/good).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model file to write.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    threads: ThreadsOpt = 0,
    debug: DebugOpt = False,
) -> None:
    """Train a model on normal images and write one checkpoint file."""
    with errors(debug):
        from ..config import load_config
        from ..io.outputs import check_output_file

        cfg = load_config(config, set_ or [])
        check_output_file(out)  # a folder or an unwritable place: said now, not after training
        setup_torch(threads or cfg.train.threads)
        from ..detection.training.train import train as run_train
        from ..detection.training.training_data import training_images

        training_images(data_dir)  # no folder or no images: one line, before any progress bar
        with progress_bar(quiet) as progress:
            total = cfg.train.steps * len(cfg.data.scales) if cfg.model.learn else 0
            task = progress.add_task("train", total=total, info="")
            state = {"val": "-"}  # no validation yet

            def on_step(step: int, loss: float, val: float | None) -> None:
                if val is not None:
                    state["val"] = f"{val:.3f}"
                progress.update(task, completed=step, info=f"loss {loss:.4f}  validation {state['val']}")

            summary = run_train(
                data_dir,
                cfg,
                out,
                on_step=on_step,
                warn=lambda m: quiet or say(f"warning: {m}"),
                on_total=lambda n: progress.update(task, total=n),
            )
        if json_out:
            print(json.dumps({"model": str(out), **summary.__dict__}))
        elif not quiet:
            print_train_summary(summary, out)


def threshold_command(
    model: Annotated[Path, typer.Argument(help="Model file from `lista train`.")],
    data: Annotated[
        Path,
        typer.Argument(help="Folder of normal images, or an MVTec category folder (test/good, test/<kind>, masks)."),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the model with the new thresholds here.")
    ] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Overwrite MODEL instead of writing --out.")] = False,
    max_fpr: Annotated[
        float | None, typer.Option("--max-fpr", help="Largest share of normal images flagged, e.g. 0.01.")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="f1 or recall=R on the defective images of an MVTec folder.")
    ] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "auto",
    debug: DebugOpt = False,
) -> None:
    """Set the image and mask thresholds from example images and write a new model file.

    --max-fpr caps the share of normal images flagged; --target f1|recall=R (needs an
    MVTec-style folder with defects) picks the best F1 or the highest threshold reaching
    that recall; both together must be met at once. Prints the false-positive rate and
    recall with the counts they rest on."""
    with errors(debug):
        setup_torch(threads)
        from ..detection.evaluation.thresholds import parse_target, set_thresholds
        from ..errors import ListaError
        from ..io.outputs import check_output_file

        if in_place and out is not None:
            raise ListaError("give --out or --in-place, not both")
        if not in_place and out is None:
            raise ListaError("give --out NEW (or --in-place to overwrite the model file)")
        if max_fpr is not None and not 0 <= max_fpr < 1:  # also NaN
            raise ListaError(f"--max-fpr {max_fpr:g}: expected a share in [0, 1), e.g. 0.01")
        destination = model if in_place else out
        if not in_place and destination.resolve() == model.resolve():
            raise ListaError(f"--out {out} is the model file itself; use --in-place to overwrite it")
        check_output_file(destination, "--in-place" if in_place else "--out")
        report = set_thresholds(model, data, destination, max_fpr, parse_target(target), pick_device(device))
        if json_out:
            print(
                json.dumps({"model": str(destination), **report.__dict__, "fpr": report.fpr, "recall": report.recall})
            )
        if not quiet:
            print_threshold_report(report, destination)


def evaluate(
    model: Annotated[Path, typer.Argument(help="Model file from `lista train`.")],
    dataset: Annotated[Path, typer.Argument(help="MVTec-style category folder (test/<kind>, ground_truth/<kind>).")],
    report_path: Annotated[
        Path | None,
        typer.Option("--report", help="Also write an HTML report (curves, per-kind table) to this file."),
    ] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "auto",
    debug: DebugOpt = False,
) -> None:
    """Measure a model on a labelled MVTec-style dataset, per defect kind and overall.

    Image and pixel AUROC, AUPRO (FPR <= 0.3), F1-max with its threshold, and F1 at the
    model's calibrated threshold."""
    with errors(debug):
        setup_torch(threads)
        from ..detection.evaluation.evaluate import evaluate as run_eval
        from ..detection.scoring.checkpoint import load_checkpoint

        if report_path is not None:
            from ..io.outputs import check_output_file
            from ..io.report import require_libraries

            require_libraries()  # a missing extra is reported before any work
            check_output_file(report_path, "--report")
        detector = load_checkpoint(model, pick_device(device))
        report = run_eval(detector, dataset)
        if report_path is not None:
            import numpy as np

            from ..io.report import eval_report

            labels = np.array([row["kind"] != "good" for row in report["image_scores"]])
            scores = np.array([row["score"] for row in report["image_scores"]])
            eval_report(report, labels, scores, report_path)
            if not quiet:
                say(f"report in {report_path}")
        if json_out:
            print(json.dumps(report))
            return
        print_eval_table(report, dataset)


def export_command(
    model: Annotated[Path, typer.Argument(help="Model file from `lista train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the exported model (e.g. texture.onnx).")],
    format_: Annotated[str, typer.Option("--format", help="onnx (the only format).")] = "onnx",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write the detector's forward pass as one ONNX file: from the image at the working size
    (float32 1 x C x h x w in [0, 1]) and a tile of it to the tile's anomaly map; the resizes,
    tiles, dampings and image score are lista's numpy code, their parameters and the
    thresholds in the file's metadata. It scores like the checkpoint (`lista detect OUT` runs
    it through ONNX Runtime). Needs lista-cli[onnx]; models it cannot express exactly are refused."""
    with errors(debug):
        from ..errors import ListaError

        if format_ != "onnx":
            raise ListaError(f"--format {format_}: expected onnx")
        if out.resolve() == model.resolve():
            raise ListaError(f"--out {out}: would overwrite the model file")
        from ..io.outputs import check_output_file

        check_output_file(out)
        from ..detection.export.export import export, require_onnx

        require_onnx()  # a missing extra is reported before the checkpoint is read
        setup_torch(0)
        from ..detection.scoring.checkpoint import load_checkpoint

        detector = load_checkpoint(model, "cpu")
        written = export(detector, out)
        if json_out:
            print_json({"model": str(model), "out": str(written), "format": "onnx", "bytes": written.stat().st_size})
        if not quiet:
            say(f"exported to {written} ({written.stat().st_size / 1e6:.1f} MB)")


def show_config(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print the merged configuration (defaults, then --config, then --set) as YAML."""
    with errors(debug):
        from ..config import load_config, to_yaml

        sys.stdout.write(to_yaml(load_config(config, set_ or [])))
