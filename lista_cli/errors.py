"""The one base class of every error a user can cause; the CLI prints it as one line, exit 1."""


class ListaError(ValueError):
    """A problem with the user's input, config, model or output folder (exit code 1)."""
