"""``bulkmail contacts``: the people mail goes to."""

from __future__ import annotations

import click

from bulkmail import contacts as domain
from cli import output
from cli.app import App, json_option, pass_app


@click.group()
def contacts() -> None:
    """Add and list contacts."""


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
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@pass_app
def list_(app: App, limit: int, as_json: bool) -> None:
    """List contacts."""
    with app.session() as session:
        rows = [domain.as_dict(c) for c in domain.list_contacts(session, limit=limit)]
    if as_json:
        output.emit_json(rows)
    else:
        columns = ["id", "email", "first_name", "last_name", "country", "tags", "attributes"]
        output.table(
            [{**r, "opted_out": r["do_not_bulk_email"]} for r in rows], columns, title="contacts"
        )
