"""Printing: rich tables for people (fitted to the terminal), JSON for scripts."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import click
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _list_cell(column: str, value: object) -> str:
    """A cell of a list table: times to the minute in UTC (``--json`` has them in full)."""
    if column.endswith("_at") and isinstance(value, str):
        with contextlib.suppress(ValueError):
            moment = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
            return moment.strftime("%Y-%m-%d %H:%MZ")
    return _cell(value)


# Narrower than this, a column of wrapped text is more line breaks than text.
_WRAP_MIN = 18


def table(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    *,
    title: str,
    wrap: Collection[str] = (),
    optional: Sequence[str] = (),
) -> None:
    """Print ``rows`` as a table of ``columns``; an empty list says so instead.

    The table fits the terminal: ``wrap`` columns (free text) wrap inside the column, the others
    never do; when that is not enough, ``optional`` columns are left out, in their order, and a
    line says which (``--json`` has every field). Times are shown to the minute, in UTC.
    """
    console = Console()
    if not rows:
        console.print(f"no {title}")
        return
    cells = {column: [_list_cell(column, row.get(column)) for row in rows] for column in columns}
    least = {}
    for column in columns:
        widest = max(cell_len(line) for text in (column, *cells[column]) for line in _lines(text))
        least[column] = min(widest, _WRAP_MIN) if column in wrap else widest
    shown = list(columns)
    for column in optional:
        if _fits(least, shown, console.width):
            break
        shown.remove(column)
    # Too narrow even so: the wrapped columns give up their minimum before the table is cut.
    roomy = _fits(least, shown, console.width)
    grid = Table(title=title)
    for column in shown:
        if column in wrap:
            grid.add_column(column, overflow="fold", min_width=least[column] if roomy else None)
        else:
            grid.add_column(column, no_wrap=True)
    for index in range(len(rows)):
        grid.add_row(*(cells[column][index] for column in shown), end_section=False)
    console.print(grid)
    hidden = [column for column in columns if column not in shown]
    if hidden:
        console.print(f"not shown: {', '.join(hidden)} (see --json)")


def _fits(widths: Mapping[str, int], columns: Sequence[str], room: int) -> bool:
    # Each column takes its width, a space either side and one border; one more border.
    return sum(widths[column] + 3 for column in columns) + 1 <= room


def _lines(text: str) -> list[str]:
    return text.splitlines() or [""]


def record(data: Mapping[str, object], *, title: str) -> None:
    """Print one record as a two-column table of field and value."""
    grid = Table(title=title, show_header=False)
    grid.add_column("field", style="bold")
    grid.add_column("value", overflow="fold")
    for key, value in data.items():
        grid.add_row(key, _cell(value))
    Console().print(grid)


output_file_option = click.option(
    "-o", "--output", "target", required=True, type=click.Path(dir_okay=False, path_type=Path)
)


def write_file(target: Path, data: bytes) -> None:
    """Write ``data`` to the file a user named with -o, and say so."""
    target.write_bytes(data)
    click.echo(f"{len(data)} bytes written to {target}")
