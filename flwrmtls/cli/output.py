"""Rendering for the CLI: readable tables for people, JSON for scripts. No colour codes.

Everything printed that came from elsewhere (the link, a certificate, a run) goes through
:func:`flwrmtls.terminal.printable`; a table cell is one line. JSON is printed with
``ensure_ascii``, so it carries no control character either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import typer

from flwrmtls.terminal import printable

__all__ = ["OutputFormat", "emit", "format_time", "printable", "table"]


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


def format_time(seconds: float) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def emit(
    fmt: OutputFormat, data: Any, headers: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    if fmt is OutputFormat.JSON:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        typer.echo(table(headers, rows))
