"""Printing: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import click
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


def table(rows: Sequence[Mapping[str, object]], columns: Sequence[str], *, title: str) -> None:
    """Print ``rows`` as a table of ``columns``; an empty list says so instead."""
    console = Console()
    if not rows:
        console.print(f"no {title}")
        return
    grid = Table(title=title)
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*(_cell(row.get(column)) for column in columns), end_section=False)
    console.print(grid)


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
