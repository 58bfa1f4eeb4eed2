"""The benchmarks' tables on the terminal (rich)."""

from __future__ import annotations


def print_metric_table(console, title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column ``metric | value`` table."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in rows:
        table.add_row(metric, value)
    console.print(table)


def print_columns_table(console, title: str, headers: list[str], rows: list[list[str]]) -> None:
    """One row per measurement, one column per runtime: labels left, numbers right."""
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
