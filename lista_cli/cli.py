"""The `lista` command line: thin Typer commands over plain functions.

Results go to stdout, messages and progress to stderr. Exit codes: 0 all done;
1 user error (input, config, model, output folder; nothing or not everything processed);
2 usage error; 3 some inputs failed (the rest were processed); 4 internal error.
"""

from __future__ import annotations

import typer

from .commands import batch, model, restoration

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # help text is printed as written: "lista-cli[report]" stays
    no_args_is_help=True,
    help="Find defects in texture images (deep-unfolded ISTA for robust PCA).\n\n"
    "Exit codes: 0 ok; 1 input, config, model or output error; 2 usage; 3 some inputs failed; 4 internal error.",
)

# Every command, in the order `lista --help` lists them.
app.command()(model.train)
app.command()(batch.detect)
app.command("merge-scores")(batch.merge_scores)
app.command("report")(batch.report_command)
app.command("eval")(model.evaluate)
app.command("threshold")(model.threshold_command)
app.command("export")(model.export_command)
app.command()(restoration.deblur)
app.command()(restoration.blur)
app.command("config")(model.show_config)


def main() -> None:
    """The console script: run the command; a stdout closed by the reader (`| head`) ends it quietly."""
    import sys

    from .console import EXIT_PIPE, silence_stdout

    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        code = EXIT_PIPE
    sys.exit(code)


if __name__ == "__main__":
    main()
