"""The command-line interface (Typer), the only layer that knows Typer and Rich."""
