"""One way every listing command prints rows: ``--format table`` (rich, at its natural width), ``csv`` or ``json``.

``json`` writes one JSON array of objects (NaN as null); ``csv`` a header and one line per row. Both go
to stdout unstyled, so ``circuits runs --format csv > runs.csv`` is a file a spreadsheet opens.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import typer

from discovery.formats.eap_ig import JOB_COLUMNS, job_row
from discovery.types.errors import UsageError

__all__ = ["FORMATS", "JOB_COLUMNS", "FormatOpt", "check_format", "emit", "job_row", "render"]

FORMATS = ("table", "csv", "json")
FormatOpt = typer.Option("table", "--format", "-f", help="output: table, csv or json")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose table, csv or json")
    return fmt


def _plain(value: Any) -> Any:
    """A JSON/CSV-safe value: NaN/inf as None, datetimes as ISO strings, tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "value") and type(value).__module__ != "builtins" and hasattr(type(value), "__members__"):
        return value.value  # an Enum
    if hasattr(value, "canonical"):
        return value.canonical  # a Circuit
    return value


def _cell(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, title: str | None = None) -> str | Any:
    """The rows as CSV or JSON text, or a rich Table (for ``table``)."""
    check_format(fmt)
    if fmt == "json":
        return json.dumps([{c: _plain(r.get(c)) for c in columns} for r in rows], default=str)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            plain = [_plain(r.get(c)) for c in columns]
            writer.writerow(["" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v) for v in plain])
        return buf.getvalue()
    from rich.table import Table

    table = Table(*columns, title=title)
    for r in rows:
        table.add_row(*(_cell(r.get(c)) for c in columns))
    return table


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, title: str | None = None) -> None:
    """Print ``rows`` (dicts keyed by column) as a table, CSV or JSON."""
    from discovery.cli.common import console

    out = render(rows, columns, fmt, title)
    if isinstance(out, str):
        console.print(out, end="" if out.endswith("\n") else "\n", soft_wrap=True, emoji=False)
    else:
        console.print(out)
