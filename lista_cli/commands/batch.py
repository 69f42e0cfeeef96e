"""Commands that score images in batches and read the results: detect, merge-scores, report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ..console import (
    EXIT_PARTIAL,
    errors,
    print_detect_summary,
    print_json,
    progress_bar,
    report_failure,
    say,
)
from .options import DebugOpt, DeviceOpt, ExtOpt, JsonOpt, QuietOpt, RecursiveOpt, ThreadsOpt, gather_inputs, load_model

DetectModelArg = Annotated[
    Path, typer.Argument(help="Model file from `lista train`, or MODEL.onnx from `lista export` (ONNX Runtime).")
]
InputsArg = Annotated[list[str], typer.Argument(help="Image files, folders, globs, or - for paths on stdin.")]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="I/N: only shard I (0..N-1) of the sorted inputs; writes scores.shard-I-of-N.csv."),
]
SkipExistingOpt = Annotated[
    bool, typer.Option("--skip-existing", help="Resume: skip images whose outputs and scores row exist.")
]
BatchOpt = Annotated[
    int,
    typer.Option("--batch", help="Images read at a time (each runs through the model alone: the same maps).", min=1),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option("--threshold", help="Image threshold for this run instead of the model's (a raw score).", min=0),
]
ReportOpt = Annotated[bool, typer.Option("--report", help="Also write DIR/report.html (needs lista-cli[report]).")]


def detect(
    model: DetectModelArg,
    inputs: InputsArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (mirrors input folders).")],
    recursive: RecursiveOpt = True,
    ext: ExtOpt = None,
    shard: ShardOpt = None,
    skip_existing: SkipExistingOpt = False,
    batch: BatchOpt = 16,
    threshold: ThresholdOpt = None,
    report: ReportOpt = False,
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
        from ..io.batch import detect as run_detect
        from ..io.inputs import parse_shard, select_shard
        from ..io.outputs import failures_path, merge_failures

        shard_spec = parse_shard(shard)
        found, detector = _prepare_detect(
            model, inputs, out, recursive, ext, shard_spec, threshold, report, device, threads
        )
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
                on_warning=lambda m: quiet or say(f"warning: {m}"),
                model_path=model,
            )
        failures = found.problems + summary.failures
        merge_failures(failures_path(out, shard_spec), failures, {str(item.path) for item in images})
        if report and shard_spec is None:
            from ..io.report import detect_report

            page = detect_report(out)
            if not quiet:
                say(f"report in {page}")
        if not quiet:
            print_detect_summary(summary, len(failures), out, shard_spec, skip_existing)
        if failures:
            raise typer.Exit(EXIT_PARTIAL)


def _prepare_detect(model, inputs, out, recursive, ext, shard, threshold, report, device, threads):
    """Everything checked before any image is scored: --report's libraries, the inputs, the
    output folder, the model and --threshold. -> (found inputs, detector)."""
    from ..errors import ListaError
    from ..io.outputs import check_output_dir

    if report:
        if shard is not None:
            raise ListaError("--report needs the whole batch: run lista report DIR after merge-scores")
        from ..io.report import require_libraries

        require_libraries()  # a missing extra is reported before any work
    found = gather_inputs(inputs, recursive, ext, out)
    check_output_dir(out)
    if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
        raise ListaError(f"--threshold {threshold:g}: expected a finite score above 0")
    detector = load_model(model, device, threads)
    if threshold is not None:
        detector.override_threshold(threshold)
    return found, detector


def merge_scores(
    out: Annotated[Path, typer.Argument(help="The --out folder the shards wrote to.")],
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Join the shards' scores.shard-I-of-N.csv into scores.csv (and their failures files)."""
    with errors(debug):
        from ..io.batch import merge_scores as run_merge

        rows, shards = run_merge(out)
        if not quiet:
            say(f"merged {rows} rows from {shards} shards into {out / 'scores.csv'}")


def report_command(
    out: Annotated[Path, typer.Argument(help="The --out folder of lista detect (with scores.csv).")],
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write OUT/report.html: summary, score histogram and a gallery of image, heatmap and mask
    sorted by score, with each image's regions. Opens from disk; needs lista-cli[report]."""
    with errors(debug):
        from ..io.report import detect_report

        page = detect_report(out)
        if not quiet:
            say(f"report in {page}")
