"""The `lista` command line: thin Typer commands over plain functions.

Results go to stdout, messages and progress to stderr. Exit codes: 0 all done;
1 user error (input, config, model, output folder; nothing or not everything processed);
2 usage error; 3 some inputs failed (the rest were processed); 4 internal error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .console import (
    EXIT_PARTIAL,
    err,
    errors,
    print_eval_table,
    print_json,
    print_threshold_report,
    print_train_summary,
    progress_bar,
    report_failure,
    say,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find defects in texture images (deep-unfolded ISTA for robust PCA).\n\n"
    "Exit codes: 0 ok; 1 input, config, model or output error; 2 usage; 3 some inputs failed; 4 internal error.",
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (see configs/default.yaml).")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config key: --set train.steps=100 (repeatable).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages on stderr, only errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="CPU threads for torch (0 = all cores).", min=0)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps; auto uses a GPU when present.")]


def _setup_torch(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def _device(name: str) -> str:
    import torch

    from .errors import ListaError

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


def _load_model(path: Path, device: str, threads: int):
    """A checkpoint as a Detector, or an exported MODEL.onnx as an OnnxDetector (ONNX Runtime
    on the CPU, no torch)."""
    if path.suffix.lower() == ".onnx":
        from .detection.onnx_model import OnnxDetector
        from .errors import ListaError

        if device not in ("auto", "cpu"):
            raise ListaError(f"--device {device}: an exported model runs on the CPU (ONNX Runtime)")
        return OnnxDetector(path, threads)
    _setup_torch(threads)
    from .detection.checkpoint import load_checkpoint

    return load_checkpoint(path, _device(device))


@app.command()
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
        from .config import load_config

        cfg = load_config(config, set_ or [])
        _setup_torch(threads or cfg.train.threads)
        from .detection.train import train as run_train

        with progress_bar(quiet) as progress:
            total = cfg.train.steps * len(cfg.data.scales) if cfg.model.learn else 0
            task = progress.add_task("train", total=total, info="")
            state = {"val": float("nan")}

            def on_step(step: int, loss: float, val: float | None) -> None:
                if val is not None:
                    state["val"] = val
                progress.update(task, completed=step, info=f"loss {loss:.4f}  validation {state['val']:.3f}")

            summary = run_train(
                data_dir,
                cfg,
                out,
                on_step=on_step,
                warn=lambda m: quiet or err.print(f"warning: {m}", highlight=False, soft_wrap=True),
                on_total=lambda n: progress.update(task, total=n),
            )
        if json_out:
            print(json.dumps({"model": str(out), **summary.__dict__}))
        elif not quiet:
            print_train_summary(summary, out)


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


def _gather_inputs(inputs: list[str], recursive: bool, ext: str | None):
    """Collect images; inputs naming nothing are reported and fatal only when nothing is left."""
    from .io.inputs import InputError, collect_inputs, parse_extensions

    found = collect_inputs(inputs, recursive=recursive, extensions=parse_extensions(ext))
    if not found.images:
        reasons = "; ".join(message for _, message in found.problems) or "no inputs"
        raise InputError(f"no images to process: {reasons}")
    for _, message in found.problems:
        report_failure("", message)
    return found


@app.command()
def detect(
    model: Annotated[
        Path, typer.Argument(help="Model file from `lista train`, or MODEL.onnx from `lista export` (ONNX Runtime).")
    ],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders, globs, or - for paths on stdin.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (mirrors input folders).")],
    recursive: RecursiveOpt = True,
    ext: ExtOpt = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", help="I/N: only shard I (0..N-1) of the sorted inputs; writes scores.shard-I-of-N.csv."
        ),
    ] = None,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Resume: skip images whose outputs and scores row exist.")
    ] = False,
    batch: Annotated[int, typer.Option("--batch", help="Images per model batch.", min=1)] = 16,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Image threshold for this run instead of the model's (a raw score).", min=0),
    ] = None,
    report: Annotated[
        bool, typer.Option("--report", help="Also write DIR/report.html (needs lista-cli[report]).")
    ] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "auto",
    debug: DebugOpt = False,
) -> None:
    """Score images: write <stem>_heatmap.png (regions outlined), <stem>_mask.png,
    <stem>_map.npy, a row per image in scores.csv and one per defect region in regions.csv.

    Exit 0 when every image was processed; 3 when some failed (the rest were processed;
    failures on stderr and in failures.csv); 1 when nothing could start (bad model,
    inputs or output folder)."""
    with errors(debug):
        from .errors import ListaError
        from .io.batch import detect as run_detect
        from .io.batch import scores_path
        from .io.inputs import parse_shard, select_shard
        from .io.outputs import check_output_dir, failures_path, write_failures

        shard_spec = parse_shard(shard)
        if report:
            if shard_spec is not None:
                raise ListaError("--report needs the whole batch: run lista report DIR after merge-scores")
            from .io.report import require_libraries

            require_libraries()  # a missing extra is reported before any work
        found = _gather_inputs(inputs, recursive, ext)
        check_output_dir(out)
        detector = _load_model(model, device, threads)
        if threshold is not None:
            if threshold <= 0:
                raise ListaError(f"--threshold {threshold:g}: expected a score above 0")
            detector.override_threshold(threshold)
        images = select_shard(found.images, shard_spec)
        with progress_bar(quiet) as progress:
            task = progress.add_task("detect", total=len(images), info="")
            summary = run_detect(
                detector,
                images,
                out,
                batch=batch,
                shard=shard_spec,
                skip_existing=skip_existing,
                on_result=print_json if json_out else None,
                on_failure=report_failure,
                on_progress=lambda n: progress.advance(task, n),
                on_warning=lambda m: quiet or err.print(f"warning: {m}", highlight=False),
            )
        failures = found.problems + summary.failures
        if failures:
            write_failures(failures_path(out, shard_spec), failures)
        if report and shard_spec is None:
            from .io.report import detect_report

            page = detect_report(out)
            if not quiet:
                err.print(f"report in {page}", highlight=False)
        if not quiet:
            rate = summary.processed / summary.seconds if summary.seconds else 0.0
            skipped = f", {summary.skipped} skipped (done before)" if skip_existing else ""
            err.print(
                f"{summary.processed} images scored ({summary.anomalous} anomalous){skipped}, {len(failures)} failed,"
                f" {rate:.1f} images/s; scores in {scores_path(out, shard_spec)}",
                highlight=False,
            )
        if failures:
            raise typer.Exit(EXIT_PARTIAL)


@app.command("threshold")
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
        _setup_torch(threads)
        from .detection.thresholds import parse_target, set_thresholds
        from .errors import ListaError

        if in_place and out is not None:
            raise ListaError("give --out or --in-place, not both")
        if not in_place and out is None:
            raise ListaError("give --out NEW (or --in-place to overwrite the model file)")
        destination = model if in_place else out
        if not in_place and destination.resolve() == model.resolve():
            raise ListaError(f"--out {out} is the model file itself; use --in-place to overwrite it")
        report = set_thresholds(model, data, destination, max_fpr, parse_target(target), _device(device))
        if json_out:
            print(
                json.dumps({"model": str(destination), **report.__dict__, "fpr": report.fpr, "recall": report.recall})
            )
        if not quiet:
            print_threshold_report(report, destination)


@app.command("export")
def export_command(
    model: Annotated[Path, typer.Argument(help="Model file from `lista train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the exported model (e.g. texture.onnx).")],
    format_: Annotated[str, typer.Option("--format", help="onnx (the only format).")] = "onnx",
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write the whole detector as one ONNX file: from a decoded image (float32 height x width x
    1 or 3 channels in [0, 1]) to its anomaly map, image score and thresholds. It scores like
    the checkpoint (`lista detect OUT` runs it through ONNX Runtime). Needs lista-cli[onnx];
    models it cannot express exactly are refused."""
    with errors(debug):
        from .errors import ListaError

        if format_ != "onnx":
            raise ListaError(f"--format {format_}: expected onnx")
        if out.resolve() == model.resolve():
            raise ListaError(f"--out {out}: would overwrite the model file")
        from .detection.export import export, require_onnx

        require_onnx()  # a missing extra is reported before the checkpoint is read
        _setup_torch(0)
        from .detection.checkpoint import load_checkpoint

        detector = load_checkpoint(model, "cpu")
        written = export(detector, out)
        if json_out:
            print_json({"model": str(model), "out": str(written), "format": "onnx", "bytes": written.stat().st_size})
        if not quiet:
            say(f"exported to {written} ({written.stat().st_size / 1e6:.1f} MB)")


@app.command("report")
def report_command(
    out: Annotated[Path, typer.Argument(help="The --out folder of lista detect (with scores.csv).")],
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write OUT/report.html: summary, score histogram and a gallery of image, heatmap and mask
    sorted by score, with each image's regions. Opens from disk; needs lista-cli[report]."""
    with errors(debug):
        from .io.report import detect_report

        page = detect_report(out)
        if not quiet:
            err.print(f"report in {page}", highlight=False)


@app.command("merge-scores")
def merge_scores(
    out: Annotated[Path, typer.Argument(help="The --out folder the shards wrote to.")],
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Join the shards' scores.shard-I-of-N.csv into scores.csv (and their failures files)."""
    with errors(debug):
        from .io.batch import merge_scores as run_merge

        rows, shards = run_merge(out)
        if not quiet:
            err.print(f"merged {rows} rows from {shards} shards into {out / 'scores.csv'}", highlight=False)


@app.command("eval")
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
        _setup_torch(threads)
        from .detection.checkpoint import load_checkpoint
        from .detection.evaluate import evaluate as run_eval

        if report_path is not None:
            from .io.report import require_libraries

            require_libraries()  # a missing extra is reported before any work
        detector = load_checkpoint(model, _device(device))
        report = run_eval(detector, dataset)
        if report_path is not None:
            import numpy as np

            from .io.report import eval_report

            labels = np.array([row["kind"] != "good" for row in report["image_scores"]])
            scores = np.array([row["score"] for row in report["image_scores"]])
            eval_report(report, labels, scores, report_path)
            if not quiet:
                err.print(f"report in {report_path}", highlight=False)
        if json_out:
            print(json.dumps(report))
            return
        print_eval_table(report, dataset)


def _run_batch(run, found, out: Path, quiet: bool, json_out: bool, label: str, **kwargs) -> None:
    """Shared driver of deblur / blur: progress, JSON lines, failures file, exit code."""
    from .io.outputs import write_failures

    with progress_bar(quiet) as progress:
        task = progress.add_task(label, total=len(found.images), info="")
        summary = run(
            found.images,
            out,
            **kwargs,
            on_result=print_json if json_out else None,
            on_failure=report_failure,
            on_progress=lambda n: progress.advance(task, n),
        )
    failures = found.problems + summary.failures
    if failures:
        write_failures(out / "failures.csv", failures)
    if not quiet:
        err.print(
            f"{summary.processed} images written to {out}, {len(failures)} failed ({summary.seconds:.1f}s)",
            highlight=False,
        )
    if failures:
        raise typer.Exit(EXIT_PARTIAL)


@app.command()
def deblur(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders, globs, or - for paths on stdin.")],
    psf: PsfOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (mirrors input folders; PNG).")],
    alpha: Annotated[str, typer.Option("--alpha", help="Regularisation weight: auto or a positive number.")] = "auto",
    reg: Annotated[
        str, typer.Option("--reg", help="laplacian (smoothness) or identity (classical Tikhonov).")
    ] = "laplacian",
    boundary: BoundaryOpt = "reflect",
    noise_sigma: Annotated[
        float | None,
        typer.Option("--noise-sigma", help="Noise std in [0,1] units for --alpha auto; estimated if unset."),
    ] = None,
    alpha_rule: Annotated[
        str | None,
        typer.Option(
            "--alpha-rule",
            help="upre, discrepancy or gcv for --alpha auto (default: upre with laplacian, discrepancy with identity).",
        ),
    ] = None,
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Folder of sharp originals: report PSNR and SSIM.")
    ] = None,
    recursive: RecursiveOpt = True,
    ext: ExtOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Restore blurred images by Tikhonov deconvolution, x = (A'A + alpha D'D)^-1 A'y.

    With --alpha auto the weight follows the discrepancy principle (noise given or
    estimated) or GCV; the chosen alpha is reported per image (--json)."""
    with errors(debug):
        from .errors import ListaError
        from .restoration.blur import Blur, parse_psf
        from .restoration.restore import deblur_images

        alpha_value: float | str = alpha
        if alpha != "auto":
            try:
                alpha_value = float(alpha)
            except ValueError:
                raise ListaError(f"--alpha must be 'auto' or a positive number, got {alpha!r}") from None
            if not alpha_value > 0:
                raise ListaError(f"--alpha must be positive, got {alpha}")
        if reg not in ("identity", "laplacian"):
            raise ListaError(f"--reg must be identity or laplacian, got {reg!r}")
        if alpha_rule not in (None, "upre", "discrepancy", "gcv"):
            raise ListaError(f"--alpha-rule must be upre, discrepancy or gcv, got {alpha_rule!r}")
        if reference is not None and not reference.is_dir():
            raise ListaError(f"--reference {reference}: no such folder")
        blur_op = Blur(parse_psf(psf), boundary)
        found = _gather_inputs(inputs, recursive, ext)
        _run_batch(
            deblur_images,
            found,
            out,
            quiet,
            json_out,
            "deblur",
            blur=blur_op,
            alpha=alpha_value,
            reg=reg,
            noise_sigma=noise_sigma,
            rule=alpha_rule,
            reference_dir=reference,
        )


@app.command()
def blur(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders, globs, or - for paths on stdin.")],
    psf: PsfOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (mirrors input folders; PNG).")],
    noise_sigma: Annotated[
        float, typer.Option("--noise-sigma", help="Gaussian noise std in [0,1] units.", min=0)
    ] = 0.0,
    boundary: BoundaryOpt = "reflect",
    seed: Annotated[int, typer.Option("--seed", help="Noise seed.")] = 0,
    recursive: RecursiveOpt = True,
    ext: ExtOpt = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Blur images with a PSF and optional noise, to try a deblurring set-up."""
    with errors(debug):
        from .restoration.blur import Blur, parse_psf
        from .restoration.restore import blur_images

        blur_op = Blur(parse_psf(psf), boundary)
        found = _gather_inputs(inputs, recursive, ext)
        _run_batch(blur_images, found, out, quiet, json_out, "blur", blur=blur_op, noise_sigma=noise_sigma, seed=seed)


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print the merged configuration (defaults, then --config, then --set) as YAML."""
    with errors(debug):
        from .config import load_config, to_yaml

        sys.stdout.write(to_yaml(load_config(config, set_ or [])))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
