"""The tables ``lightning-reg`` prints: text columns left-aligned, then numbers right-aligned."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "format_strength",
    "format_table",
]


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, left: int) -> str:
    """``header``, a rule of dashes and ``rows`` as aligned text, columns two spaces apart.

    Each column is as wide as its widest cell; the first ``left`` columns are left-aligned (names,
    modes, strengths), the others right-aligned (measurements). Trailing spaces are dropped.

    Args:
        header: the column names.
        rows: the cells of each row, already formatted, as many as ``header``.
        left: how many columns, from the first, are left-aligned.

    >>> print(format_table(("name", "l1", "loss"), [("a", "1e-03", "0.61"), ("bcd", "0", "12.30")], left=2))
    name  l1      loss
    ----  -----  -----
    a     1e-03   0.61
    bcd   0      12.30
    """
    cells = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]

    def line(row: Sequence[str]) -> str:
        text = [
            cell.ljust(width) if column < left else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(text).rstrip()

    return "\n".join([line(cells[0]), line(tuple("-" * width for width in widths)), *map(line, cells[1:])])


def format_strength(value: float, digits: int) -> str:
    """A strength in a table: ``"0"``, or scientific notation with ``digits`` after the point.

    >>> format_strength(0.0, 2), format_strength(3e-5, 0), format_strength(1e-4, 2)
    ('0', '3e-05', '1.00e-04')
    """
    return "0" if value == 0 else f"{value:.{digits}e}"
