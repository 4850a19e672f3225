"""Tables as text: markdown (what docs/performance.md shows) with numbers right-aligned.

Rules: pure functions from rows of strings to text; every cell of a column is padded to the
column's width so the source reads as a table too; a missing figure is ``-``.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.stats import Spread

__all__ = ["fmt_spread", "markdown_table"]


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 0
) -> list[str]:
    """A markdown table: the first ``left`` columns left-aligned, the others right-aligned."""
    columns = len(header)
    if any(len(row) != columns for row in rows):
        raise ValueError(f"every row needs {columns} cells")
    widths = [max(3, len(header[i]), *(len(row[i]) for row in rows)) for i in range(columns)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if index < left else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        ":" + "-" * (width - 1) if index < left else "-" * (width - 1) + ":"
        for index, width in enumerate(widths)
    ]
    return [line(header), line(rule), *(line(row) for row in rows)]


def fmt_spread(values: Spread | None, digits: int = 2, *, runs: int = 1) -> str:
    """``median`` with ``(min-max)`` when there was more than one run; ``-`` when missing."""
    if values is None:
        return "-"
    text = f"{values['median']:.{digits}f}"
    if runs > 1:
        text += f" ({values['min']:.{digits}f}-{values['max']:.{digits}f})"
    return text
