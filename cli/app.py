"""What every command shares: the settings, a lazily built engine, and one transaction helper."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import click
import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import db, settings


@dataclass
class App:
    settings: settings.Settings
    _engine: sa.Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = db.make_engine(db.database_url(self.settings))
        return self._engine

    @contextlib.contextmanager
    def session(self) -> Iterator[orm.Session]:
        with db.session_scope(self.engine) as session:
            yield session


pass_app = click.make_pass_decorator(App)

# Exit codes (the README's CLI reference): 0 all done; 1 an error, one line on stderr; 2 a usage
# error (click); 3 done, but part of it failed or was rejected, as the output says.
EXIT_INCOMPLETE = 3

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")

cancel_wait_option = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for pollers holding the emails to withdraw them.",
)


class TextFile(click.ParamType[str]):
    """A UTF-8 text file (or ``-`` for standard input), given to the command as its contents."""

    name = "FILE"

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            if value == "-":
                return sys.stdin.read()
            with open(value, encoding="utf-8") as handle:
                return handle.read()
        except OSError as error:
            self.fail(f"cannot read {value}: {error.strerror}", param, ctx)
        except UnicodeDecodeError:
            self.fail(f"{value} is not UTF-8 text; convert it to UTF-8", param, ctx)
