"""``circuits patch`` (path patching heatmaps)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the path patching command."""
