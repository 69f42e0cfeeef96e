"""What the command line prints: the stderr console, error handling and the summaries of
train, threshold and eval. Messages echo paths, options and values the user typed, so they
are printed literally (no Rich markup, no :emoji: codes, no highlighting); styles come only
from Text objects."""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERNAL = 0, 1, 2, 3, 4
EXIT_PIPE = 141  # 128 + SIGPIPE: what the shell reports for `yes | head -n 1`

err = Console(stderr=True, markup=False, emoji=False, highlight=False)


@contextmanager
def errors(debug: bool):
    """Print a user error (or an OS failure: permission, disk full, ...) as one line and exit
    1; a closed stdout ends the run quietly with 141; anything unexpected exits 4."""
    from .errors import ListaError, os_problem

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        say(f"warning: {message}")  # one plain line, e.g. a renamed config key

    previous, warnings.showwarning = warnings.showwarning, show_warning
    try:
        yield
    except ListaError as exc:
        if debug:
            traceback.print_exc()
        err.print(Text.assemble(("error:", "bold red"), f" {exc}"), soft_wrap=True)
        raise typer.Exit(EXIT_USER) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except BrokenPipeError:  # `lista detect ... --json | head -n 1`: what was written stays
        silence_stdout()
        raise typer.Exit(EXIT_PIPE) from None
    except OSError as exc:  # an OS failure no layer below named: the path and the problem
        if debug:
            traceback.print_exc()
        where = "".join(f"{name}: " for name in (exc.filename, exc.filename2) if name)
        err.print(Text.assemble(("error:", "bold red"), f" {where}{os_problem(exc)}"), soft_wrap=True)
        raise typer.Exit(EXIT_USER) from None
    except Exception as exc:  # noqa: BLE001 - last-resort report
        if debug:
            traceback.print_exc()
        err.print(
            Text.assemble(
                ("internal error:", "bold red"), f" {type(exc).__name__}: {exc} (rerun with --debug for details)"
            ),
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERNAL) from None
    finally:
        warnings.showwarning = previous


def silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush into a closed pipe is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is no file (a test runner's buffer)
        pass


def progress_bar(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )


def report_failure(path: str, message: str) -> None:
    err.print(Text.assemble(("failed:", "red"), f" {message}"), soft_wrap=True)


def print_json(row: dict) -> None:
    print(json.dumps(row), flush=True)


def say(message: str) -> None:
    """One plain line on stderr, printed as given."""
    err.print(message, highlight=False, soft_wrap=True)


def print_train_summary(summary: Any, out: Path) -> None:
    """What training chose and measured (lista train without --json)."""
    say(
        f"trained on {summary.images - summary.held_out} images ({summary.held_out} held out), "
        f"{summary.channels} channel(s), {summary.steps} steps per scale in {summary.seconds:.1f}s; "
        f"image threshold {summary.threshold:.4g}, mask threshold {summary.pixel_threshold:.4g}"
    )
    say(f"  working size {summary.image_size}")
    for scale in summary.scales:
        say(
            f"  scale 1/{scale['factor']}: subspace rank {scale['rank']}, validation "
            f"{scale['val_auroc_start']:.3f} -> {scale['val_auroc_best']:.3f} (kept step {scale['best_step']})"
            + (
                f"; S divided near {scale['damped_codes']} of {scale['bank_codes']} bank codes,"
                f" by at most {scale['largest_divisor']:.3g}"
                if scale.get("bank_codes")
                else ""
            )
        )
    say(
        f"  maps combined with sparse share {summary.sparse_share:g}, residual weight"
        f" {summary.residual_weight:g}, finest scale's share {summary.finest_share:.2g},"
        f" {summary.sparse_smoothing} S smoothing: validation"
        f" {summary.val_auroc:.3f} (mean pixel AUROC over defect families)"
    )
    families = ", ".join(f"{name} {value:.3f}" for name, value in summary.val_families.items())
    say(f"  validation pixel AUROC per defect family: {families}")
    if summary.level_reference is None:
        say("  level damping off")
    else:
        say(
            f"  level damping: a map whose median exceeds {summary.level_reference:.4g} is divided by"
            f" the ratio, at most {summary.level_cap:.3g}"
        )
    say(f"wrote {out}")


def print_threshold_report(report: Any, destination: Path) -> None:
    """Old and new thresholds with the counts behind the rates (lista threshold)."""
    say(
        f"image threshold {report.previous_threshold:.6g} -> {report.threshold:.6g}, mask threshold"
        f" {report.previous_pixel_threshold:.6g} -> {report.pixel_threshold:.6g}"
    )
    rate = f" (false-positive rate {report.fpr:.1%})" if report.normal_images else ""
    say(f"  normal images flagged: {report.normal_flagged} of {report.normal_images}{rate}")
    if report.defective_images:
        say(
            f"  defective images found: {report.defective_found} of {report.defective_images}"
            f" (recall {report.recall:.1%})"
        )
    say(f"wrote {destination}")


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"


def print_eval_table(report: dict[str, Any], dataset: Path) -> None:
    """The per-kind metrics table of lista eval, on stdout."""
    from rich.table import Table

    from .detection.evaluation.evaluate import EVAL_COLUMNS as columns

    thresholds = f"image threshold {report['threshold']:.4g}, mask threshold {report['pixel_threshold']:.4g}"
    table = Table(title=Text(f"{dataset}  ({thresholds})"))
    table.add_column("kind")
    for title in columns.values():
        table.add_column(title, justify="right")
    rows = [(Text(kind), row) for kind, row in report["kinds"].items()] + [(Text("all", style="bold"), report)]
    for kind, row in rows:
        table.add_row(kind, *(str(row[k]) if k == "images" else _fmt(row[k]) for k in columns))
    Console(width=max(Console().width, 132)).print(table)


def print_detect_summary(summary, failed: int, out: Path, shard, skip_existing: bool) -> None:
    """One line after `lista detect`: counts, rate and where the scores are."""
    from .io.batch import scores_path

    rate = summary.processed / summary.seconds if summary.seconds else 0.0
    skipped = f", {summary.skipped} skipped (done before)" if skip_existing else ""
    say(
        f"{summary.processed} images scored ({summary.anomalous} anomalous){skipped}, {failed} failed,"
        f" {rate:.1f} images/s; scores in {scores_path(out, shard)}"
    )
