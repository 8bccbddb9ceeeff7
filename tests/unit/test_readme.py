"""The README must stay true: every setting and every command it promises exists."""

from __future__ import annotations

import re
from pathlib import Path

import click

from bulkmail import settings
from cli.main import cli

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    for name, field in settings.Settings.model_fields.items():
        variable = f"BULKMAIL_{name.upper()}"
        row = next((line for line in README.splitlines() if f"| `{variable}` |" in line), None)
        assert row is not None, f"{variable} is missing from the README's settings table"
        default = field.default
        if default is None:
            assert "*(unset)*" in row, (variable, row)
            continue
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert shown in row or (default == "" and "*(empty)*" in row), (variable, row)


def test_every_documented_env_variable_exists() -> None:
    documented = set(re.findall(r"`BULKMAIL_([A-Z_]+)`", README)) - {"TEST_PG"}
    assert documented == {name.upper() for name in settings.Settings.model_fields}


def _commands(group: click.Group, prefix: str = "bulkmail") -> set[str]:
    # The root group loads its commands when asked by name: list them the same way.
    context = click.Context(group)
    found = set()
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, name
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found |= _commands(command, path)
        else:
            found.add(path)
    return found


def test_every_command_is_in_the_cli_reference() -> None:
    reference = README[README.index("## CLI reference") : README.index("### CSV import")]
    commands = _commands(cli)
    assert {"bulkmail db status", "bulkmail worker poller"} <= commands
    for path in commands:
        group, _, leaf = path.rpartition(" ")
        assert (
            f"`{path}" in reference
            or (f"`{group}" in reference and f"/ `{leaf}" in reference)
            or f"/ `{path.split(' ', 1)[1]}" in reference
        ), f"{path} is not in the README"
