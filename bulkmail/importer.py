"""Importing contacts from CSV: streamed, validated row by row, upserted on the address.

The file is UTF-8 (a byte order mark is allowed) with a header row. The columns ``email``,
``first_name``, ``last_name``, ``company``, ``country``, ``language``, ``tags`` (separated by
``;``) and ``do_not_bulk_email`` (true/false, 1/0, yes/no) are contact fields, matched without
regard to case; every other column is an attribute of that name holding the cell's text, so its
name must be one the query language can use: letters, digits and ``_``, not starting with a digit.

How rows become contacts:

- Cells are trimmed. A row whose cells are all empty is skipped. A bad row (no address or one
  email-validator refuses, a line break or NUL in a contact field or tag, a NUL in an attribute,
  a value longer than its column, a wrong number of fields) is rejected with the line it starts
  on and the reason; the others are imported. Attribute values may hold line breaks. In strict
  mode the first bad row stops the import and nothing is imported: the import is one
  transaction, and so is the non-strict import (a file that cannot be read imports nothing).
- An address already stored is updated: non-empty cells overwrite, empty cells and missing
  columns leave the stored value alone, tags are added to the stored ones, attributes are merged
  key by key. An import never clears an opt-out: ``do_not_bulk_email`` can only go to true.
- When one address appears on several rows, the last row wins; the earlier ones are counted as
  duplicates. A contact whose stored values already equal the row's is counted as unchanged
  and is not written.

Rows are staged in a temporary table with COPY and merged into ``contacts`` with one
``INSERT ... ON CONFLICT`` statement, so memory stays constant whatever the size of the file.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import contacts, errors, headers, models

FIELDS = ("email", "first_name", "last_name", "company", "country", "language", "tags")
OPT_OUT = "do_not_bulk_email"
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rejected:
    """A row that was not imported: where it starts in the file and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportResult:
    """What an import did. ``rows`` = inserted + updated + unchanged + duplicates + rejected."""

    rows: int
    inserted: int
    updated: int
    unchanged: int
    duplicates: int
    rejected: int


def import_file(
    session: orm.Session,
    path: Path | str,
    *,
    strict: bool = False,
    on_rejected: Callable[[Rejected], None] | None = None,
) -> ImportResult:
    """Import the CSV file at ``path``; see the module's description for the rules."""
    try:
        with open(path, "rb") as source:
            return import_csv(session, _utf8_lines(source), strict=strict, on_rejected=on_rejected)
    except OSError as error:
        raise errors.InvalidInput(f"cannot read {path}: {error.strerror}") from error


def import_bytes(
    session: orm.Session,
    source: Iterable[bytes],
    *,
    strict: bool = False,
    on_rejected: Callable[[Rejected], None] | None = None,
) -> ImportResult:
    """Import CSV given as lines of bytes (a binary file, an upload spooled to one)."""
    return import_csv(session, _utf8_lines(source), strict=strict, on_rejected=on_rejected)


def _utf8_lines(source: Iterable[bytes]) -> Iterator[str]:
    # Decoding line by line (not in a text wrapper's 8 KB chunks) names the line that is bad.
    for number, line in enumerate(source, start=1):
        try:
            yield (line.removeprefix(codecs.BOM_UTF8) if number == 1 else line).decode("utf-8")
        except UnicodeDecodeError:
            raise errors.InvalidInput(
                f"line {number} is not UTF-8 text; convert the file to UTF-8 and import it "
                "again (nothing was imported)"
            ) from None


def import_csv(
    session: orm.Session,
    source: Iterable[str],
    *,
    strict: bool = False,
    on_rejected: Callable[[Rejected], None] | None = None,
) -> ImportResult:
    """Import CSV text given as lines (like a text file opened with ``newline=""``).

    ``on_rejected`` is called for each bad row as it is found. In strict mode the first bad
    row raises ``errors.InvalidInput`` instead, and the caller's transaction must be rolled back.
    """
    reader = csv.reader(source)
    layout = _Layout.from_header(_read_header(reader))
    rows = rejected = 0
    with _staging(session) as stage:
        for item in _rows(reader, layout):
            rows += 1
            if isinstance(item, Rejected):
                if strict:
                    raise errors.InvalidInput(f"{item}; nothing was imported (strict mode)")
                rejected += 1
                if on_rejected is not None:
                    on_rejected(item)
            else:
                stage(item)
    counts = _merge(session, models.utcnow())
    # The merge wrote behind the ORM's back: reload anything this session had loaded.
    session.expire_all()
    return ImportResult(
        rows=rows,
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        duplicates=rows - rejected - counts.distinct,
        rejected=rejected,
    )


class _Reader(Protocol):
    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


def _read_header(reader: _Reader) -> list[str]:
    try:
        for header in reader:
            if any(cell.strip() for cell in header):
                return header
    except (csv.Error, UnicodeDecodeError) as error:
        raise _unreadable(reader.line_num, error) from error
    raise errors.InvalidInput(
        "the file is empty; its first row must name the columns, e.g. email,first_name"
    )


def _unreadable(line: int, error: Exception) -> errors.InvalidInput:
    if isinstance(error, UnicodeDecodeError):
        what = "the file is not UTF-8 text"
    else:
        what = f"line {line} is not CSV ({error})"
    return errors.InvalidInput(f"{what}; fix the file and import it again (nothing was imported)")


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where each field sits in a row, from the header."""

    width: int
    email: int
    texts: tuple[tuple[str, int, int], ...]  # (field, index, maximum length)
    tags: int | None
    opt_out: int | None
    attributes: tuple[tuple[str, int], ...]

    @classmethod
    def from_header(cls, header: list[str]) -> _Layout:
        names = [cell.strip() for cell in header]
        names[0] = names[0].lstrip("\ufeff").strip()  # a BOM that came through a text stream
        positions: dict[str, int] = {}
        attributes = []
        for index, name in enumerate(names):
            column = index + 1
            known = name.lower()
            if not name:
                raise errors.InvalidInput(
                    f"header column {column} is empty; give every column a name"
                )
            if known in (*FIELDS, OPT_OUT):
                name = known
            elif not _ATTRIBUTE_NAME.fullmatch(name):
                raise errors.InvalidInput(
                    f"header column {column} {name!r} cannot be an attribute name; use letters, "
                    "digits and _ (not starting with a digit), e.g. "
                    f"{re.sub(r'[^A-Za-z0-9_]+', '_', name).strip('_') or 'custom_field'}"
                )
            if name in positions:
                raise errors.InvalidInput(
                    f"header columns {positions[name] + 1} and {column} are both {name!r}; "
                    "name each column once"
                )
            positions[name] = index
            if name not in (*FIELDS, OPT_OUT):
                attributes.append((name, index))
        if "email" not in positions:
            raise errors.InvalidInput(
                "the header has no email column; the first row must name the columns, "
                "one of them email"
            )
        return cls(
            width=len(names),
            email=positions["email"],
            texts=tuple(
                (field, positions[field], limit)
                for field, limit in contacts.TEXT_FIELDS.items()
                if field in positions
            ),
            tags=positions.get("tags"),
            opt_out=positions.get(OPT_OUT),
            attributes=tuple(attributes),
        )


# The staging row: line, email, first_name, last_name, company, country, language,
# tags (JSON), attributes (JSON), do_not_bulk_email (None: leave as it is).
_Row = tuple[
    int, str, str | None, str | None, str | None, str | None, str | None, str, str, bool | None
]


class _BadRow(Exception):
    pass


def _rows(reader: _Reader, layout: _Layout) -> Iterator[_Row | Rejected]:
    line_num = reader.line_num
    while True:
        line = line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as error:
            raise _unreadable(line, error) from error
        line_num = reader.line_num
        if not cells:
            continue
        try:
            yield _convert(cells, layout, line)
        except _BadRow as bad:
            if not any(cell.strip() for cell in cells):
                continue
            yield Rejected(line=line, reason=str(bad))


def _checked(field: str, value: str) -> str:
    try:
        return headers.check_header_value(field, value)
    except errors.InvalidInput as error:
        raise _BadRow(str(error)) from None


def _convert(cells: list[str], layout: _Layout, line: int) -> _Row:
    if len(cells) != layout.width:
        raise _BadRow(f"has {len(cells)} fields but the header has {layout.width}")
    raw_email = cells[layout.email]
    if not raw_email.strip():
        raise _BadRow("has no email address; every row needs one")
    try:
        email = contacts.normalize_email(raw_email)
    except errors.InvalidInput as error:
        raise _BadRow(str(error)) from None
    texts: dict[str, str | None] = {}
    for field, index, limit in layout.texts:
        value = _checked(field, cells[index]).strip()
        if len(value) > limit:
            raise _BadRow(f"{field} is longer than {limit} characters")
        texts[field] = value or None
    tags: list[str] = []
    if layout.tags is not None:
        raw_tags = _checked("tags", cells[layout.tags])
        tags = sorted({tag.strip() for tag in raw_tags.split(";")} - {""})
    opt_out = None
    if layout.opt_out is not None:
        flag = cells[layout.opt_out].strip().lower()
        if flag in _TRUE:
            opt_out = True
        elif flag in _FALSE:
            opt_out = False
        elif flag:
            raise _BadRow(f"{OPT_OUT} {flag[:20]!r} is not one of true/false, 1/0, yes/no")
    attributes = {}
    for key, index in layout.attributes:
        value = cells[index].strip()
        if "\x00" in value:
            raise _BadRow(f"attribute {key} contains a NUL character; remove it")
        if value:
            attributes[key] = value
    return (
        line,
        email,
        texts.get("first_name"),
        texts.get("last_name"),
        texts.get("company"),
        texts.get("country"),
        texts.get("language"),
        json.dumps(tags, ensure_ascii=False),
        json.dumps(attributes, ensure_ascii=False),
        opt_out,
    )


_COLUMNS = (
    "line, email, first_name, last_name, company, country, language, "
    "tags, attributes, do_not_bulk_email"
)

_CREATE = """
CREATE TEMPORARY TABLE bulkmail_import (
    line bigint NOT NULL,
    email text NOT NULL,
    first_name text, last_name text, company text, country text, language text,
    tags jsonb NOT NULL,
    attributes jsonb NOT NULL,
    do_not_bulk_email boolean
)
"""

# DISTINCT ON keeps the last row of each address: one INSERT may not touch a row twice.
# xmax = 0 on a returned row means the INSERT created it rather than updated it.
_MERGE = """
WITH latest AS MATERIALIZED (
    SELECT DISTINCT ON (email) * FROM bulkmail_import ORDER BY email, line DESC
), written AS (
    INSERT INTO contacts AS c (
        email, first_name, last_name, company, country, language,
        tags, attributes, do_not_bulk_email, created_at, modified_at
    )
    SELECT email, first_name, last_name, company, country, language,
           tags, attributes, coalesce(do_not_bulk_email, false), :now, :now
    FROM latest
    ON CONFLICT (email) DO UPDATE SET
        first_name = coalesce(excluded.first_name, c.first_name),
        last_name = coalesce(excluded.last_name, c.last_name),
        company = coalesce(excluded.company, c.company),
        country = coalesce(excluded.country, c.country),
        language = coalesce(excluded.language, c.language),
        tags = CASE WHEN c.tags @> excluded.tags THEN c.tags ELSE (
            SELECT jsonb_agg(u.tag ORDER BY u.tag COLLATE "C")
            FROM (SELECT DISTINCT jsonb_array_elements_text(c.tags || excluded.tags) AS tag) AS u
        ) END,
        attributes = c.attributes || excluded.attributes,
        do_not_bulk_email = c.do_not_bulk_email OR excluded.do_not_bulk_email,
        modified_at = excluded.modified_at
    WHERE coalesce(excluded.first_name, c.first_name) IS DISTINCT FROM c.first_name
       OR coalesce(excluded.last_name, c.last_name) IS DISTINCT FROM c.last_name
       OR coalesce(excluded.company, c.company) IS DISTINCT FROM c.company
       OR coalesce(excluded.country, c.country) IS DISTINCT FROM c.country
       OR coalesce(excluded.language, c.language) IS DISTINCT FROM c.language
       OR NOT c.tags @> excluded.tags
       OR NOT c.attributes @> excluded.attributes
       OR (excluded.do_not_bulk_email AND NOT c.do_not_bulk_email)
    RETURNING xmax = 0 AS inserted
)
SELECT (SELECT count(*) FROM latest) AS distinct_rows,
       count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
FROM written
"""


# The primary key on email with INSERT OR REPLACE keeps the last row of each address.
def _now_bound(sql: str) -> sa.TextClause:
    return sa.text(sql).bindparams(sa.bindparam("now", type_=models.UTCDateTime()))


@contextlib.contextmanager
def _staging(session: orm.Session) -> Iterator[Callable[[_Row], None]]:
    connection = session.connection().connection.driver_connection
    assert connection is not None
    with connection.cursor() as cursor:
        cursor.execute(_CREATE)
        # An exception inside the block aborts the COPY; the caller's rollback cleans up.
        with cursor.copy(f"COPY bulkmail_import ({_COLUMNS}) FROM STDIN") as copy:
            yield copy.write_row


def _merge(session: orm.Session, now: dt.datetime) -> _Counts:
    distinct, inserted, updated = session.execute(_now_bound(_MERGE), {"now": now}).one()
    session.execute(sa.text("DROP TABLE bulkmail_import"))
    return _Counts(
        inserted=inserted,
        updated=updated,
        unchanged=distinct - inserted - updated,
        distinct=distinct,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Counts:
    inserted: int
    updated: int
    unchanged: int
    distinct: int
