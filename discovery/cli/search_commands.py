"""CLI commands of the search area (filled in by that area's work)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
