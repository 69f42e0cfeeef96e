"""The `lista` commands, one module per family; cli.py registers them on the Typer app."""
