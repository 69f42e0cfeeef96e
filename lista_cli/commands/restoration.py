"""Deblurring commands: deblur, blur."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ..console import (
    EXIT_PARTIAL,
    errors,
    print_json,
    progress_bar,
    report_failure,
    say,
)
from .options import BoundaryOpt, DebugOpt, ExtOpt, JsonOpt, PsfOpt, QuietOpt, RecursiveOpt, gather_inputs


def check_apart(inputs: list[str], out: Path) -> None:
    """--out must not be an input folder or hold one: the restored PNGs would replace or mix
    with the originals."""
    from ..errors import ListaError

    out_root = out.resolve()
    for item in inputs:
        folder = Path(item)
        if item != "-" and folder.is_dir() and folder.resolve().is_relative_to(out_root):
            raise ListaError(f"--out {out}: is, or holds, the input folder {item}; outputs would mix with the inputs")


def _run_batch(run, found, out: Path, quiet: bool, json_out: bool, label: str, **kwargs) -> None:
    """Shared driver of deblur / blur: progress, JSON lines, failures file, exit code."""
    from ..io.outputs import write_failures

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
        say(f"{summary.processed} images written to {out}, {len(failures)} failed ({summary.seconds:.1f}s)")
    if failures:
        raise typer.Exit(EXIT_PARTIAL)


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

    With --alpha auto the weight follows --alpha-rule: UPRE (the default with the Laplacian)
    or the discrepancy principle (the default with the identity), both with the noise given
    or estimated, or GCV; the chosen alpha is reported per image (--json)."""
    with errors(debug):
        from ..errors import ListaError
        from ..restoration.blur import Blur, parse_psf
        from ..restoration.deblur import check_options
        from ..restoration.restore import deblur_images

        alpha_value = check_options(alpha, reg, alpha_rule, noise_sigma)  # before any image is read
        if reference is not None and not reference.is_dir():
            raise ListaError(f"--reference {reference}: no such folder")
        blur_op = Blur(parse_psf(psf), boundary)
        found = gather_inputs(inputs, recursive, ext, out)
        check_apart(inputs, out)
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
        from ..errors import ListaError
        from ..restoration.blur import Blur, parse_psf
        from ..restoration.restore import blur_images

        if not (math.isfinite(noise_sigma) and noise_sigma >= 0):
            raise ListaError(f"--noise-sigma must be a noise std >= 0 (in [0,1] units), got {noise_sigma:g}")
        blur_op = Blur(parse_psf(psf), boundary)
        found = gather_inputs(inputs, recursive, ext, out)
        check_apart(inputs, out)
        _run_batch(blur_images, found, out, quiet, json_out, "blur", blur=blur_op, noise_sigma=noise_sigma, seed=seed)
