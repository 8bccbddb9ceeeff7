"""``bulkmail contacts``: the people mail goes to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from bulkmail import contacts as domain
from bulkmail import importer
from cli import output
from cli.app import EXIT_INCOMPLETE, App, json_option, pass_app

# --json lists this many bad rows (the count covers them all): the output stays a sane size.
MAX_JSON_REJECTIONS = 1_000
QUERY_HELP = (
    "Recipient query, e.g. \"country = 'DE' and not tags contains 'churned'\" "
    "(see the README for the language)."
)


@click.group()
def contacts() -> None:
    """Add, import, count and list contacts."""


def _attribute(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--attr")
    return key.strip(), val


@contacts.command()
@click.option("--email", required=True, metavar="ADDRESS")
@click.option("--first-name")
@click.option("--last-name")
@click.option("--company")
@click.option("--country")
@click.option("--language")
@click.option("--tag", "tags", multiple=True, metavar="T", help="Add a tag (repeatable).")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="Custom attribute.")
@click.option("--no-bulk-email", is_flag=True, help="The contact opted out of bulk email.")
@pass_app
def add(
    app: App,
    email: str,
    first_name: str | None,
    last_name: str | None,
    company: str | None,
    country: str | None,
    language: str | None,
    tags: tuple[str, ...],
    attrs: tuple[str, ...],
    no_bulk_email: bool,
) -> None:
    """Add a contact; prints its id."""
    attributes = dict(_attribute(a) for a in attrs)
    with app.session() as session:
        contact = domain.add(
            session,
            email=email,
            first_name=first_name,
            last_name=last_name,
            company=company,
            country=country,
            language=language,
            tags=tags,
            attributes=attributes,
            do_not_bulk_email=no_bulk_email,
        )
    click.echo(contact.id)


@contacts.command(name="list")
@click.option("--query", metavar="Q", help=QUERY_HELP)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@pass_app
def list_(app: App, query: str | None, limit: int, as_json: bool) -> None:
    """List contacts (those matching --query), oldest first."""
    with app.session() as session:
        found = domain.list_contacts(session, query=query, limit=limit)
        rows = [domain.as_dict(c) for c in found]
    if as_json:
        output.emit_json(rows)
    else:
        columns = ["id", "email", "first_name", "last_name", "country", "tags", "attributes"]
        output.table(
            [{**r, "opted_out": r["do_not_bulk_email"]} for r in rows],
            columns,
            title="contacts",
            wrap=("email", "first_name", "last_name", "tags", "attributes"),
            optional=("attributes", "tags", "last_name", "country"),
        )


@contacts.command()
@click.option("--query", metavar="Q", help=QUERY_HELP)
@pass_app
def count(app: App, query: str | None) -> None:
    """Print how many contacts match --query (all contacts without it)."""
    with app.session() as session:
        click.echo(domain.count(session, query))


@contacts.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="Stop at the first bad row and import nothing.")
@json_option
@pass_app
@click.pass_context
def import_(ctx: click.Context, app: App, file: Path, strict: bool, as_json: bool) -> None:
    """Import contacts from a CSV file with a header row, updating those already stored.

    Columns email, first_name, last_name, company, country, language, tags (separated by ;)
    and do_not_bulk_email are contact fields; any other column is an attribute. Bad rows are
    reported on stderr with their line number and skipped, and the command exits 3 (with
    --strict: nothing is imported, exit 1).
    """
    reported: list[dict[str, object]] = []

    def rejected(row: importer.Rejected) -> None:
        if not as_json:
            click.echo(str(row), err=True)
        elif len(reported) < MAX_JSON_REJECTIONS:
            reported.append({"line": row.line, "reason": row.reason})

    with app.session() as session:
        result = importer.import_file(session, file, strict=strict, on_rejected=rejected)
    if as_json:
        output.emit_json({**dataclasses.asdict(result), "rejections": reported})
    else:
        click.echo(
            f"{result.rows} rows: {result.inserted} inserted, {result.updated} updated, "
            f"{result.unchanged} unchanged, {result.duplicates} duplicates (a later row won), "
            f"{result.rejected} rejected"
        )
    if result.rejected:
        ctx.exit(EXIT_INCOMPLETE)
