"""``bulkmail attachments``: files on emails and templates, stored once and reused."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from bulkmail import attachments as domain
from bulkmail import templates
from cli import output
from cli.app import App, json_option, pass_app

email_option = click.option("--email", "email_id", type=int, metavar="ID", help="The email's id.")
template_option = click.option("--template", "template_name", metavar="NAME", help="The template.")


def _owner(app: App, email_id: int | None, template_name: str | None) -> domain.Owner:
    if (email_id is None) == (template_name is None):
        raise click.UsageError("give exactly one of --email ID or --template NAME")
    if email_id is not None:
        return domain.Owner(email_id=email_id)
    assert template_name is not None
    with app.session() as session:
        return domain.Owner(template_id=templates.get(session, template_name).id)


@click.group()
def attachments() -> None:
    """Attach files to emails and templates."""


@attachments.command()
@email_option
@template_option
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--reuse", type=int, metavar="ATTACHMENT_ID", help="Point at a stored blob instead.")
@click.option("--name", "file_name", metavar="FILENAME", help="File name shown to recipients.")
@click.option("--mime-type", metavar="TYPE", help="Detected from the name when not given.")
@click.option("--content-id", metavar="CID", help="Inline image referenced as cid:CID in HTML.")
@click.option("--subject", help="A description of the attachment.")
@pass_app
def add(
    app: App,
    email_id: int | None,
    template_name: str | None,
    file: Path | None,
    reuse: int | None,
    file_name: str | None,
    mime_type: str | None,
    content_id: str | None,
    subject: str | None,
) -> None:
    """Attach FILE (or --reuse ATTACHMENT_ID); prints the record id and its attachment_id."""
    if (file is None) == (reuse is None):
        raise click.UsageError("give either FILE or --reuse ATTACHMENT_ID")
    owner = _owner(app, email_id, template_name)
    name = file_name or (file.name if file else f"attachment-{reuse}")
    with app.session() as session, contextlib.ExitStack() as stack:
        # Read in chunks as it is stored, after its size was checked: never whole in memory.
        data = None if file is None else stack.enter_context(file.open("rb"))
        record = domain.add(
            session,
            owner,
            file_name=name,
            data=data,
            reuse=reuse,
            mime_type=mime_type,
            subject=subject,
            content_id=content_id,
        )
        click.echo(f"{record.id} attachment_id={record.attachment_id}")


@attachments.command(name="list")
@email_option
@template_option
@json_option
@pass_app
def list_(app: App, email_id: int | None, template_name: str | None, as_json: bool) -> None:
    """List the attachments of an email or a template."""
    owner = _owner(app, email_id, template_name)
    with app.session() as session:
        rows = [domain.as_dict(x) for x in domain.list_for(session, owner)]
    if as_json:
        output.emit_json(rows)
    else:
        columns = [
            "id",
            "object_type",
            "attachment_id",
            "file_name",
            "size",
            "mime_type",
            "content_id",
        ]
        output.table(
            rows,
            columns,
            title="attachments",
            wrap=("file_name", "mime_type", "content_id"),
            optional=("content_id", "attachment_id", "mime_type"),
        )


@attachments.command()
@click.argument("record_id", metavar="RECORD_ID", type=int)
@output.output_file_option
@pass_app
def get(app: App, record_id: int, target: Path) -> None:
    """Write an attachment's bytes to a file."""
    with app.session() as session:
        data = domain.read(session, record_id)
    output.write_file(target, data)


@attachments.command()
@click.argument("record_id", metavar="RECORD_ID", type=int)
@pass_app
def delete(app: App, record_id: int) -> None:
    """Delete an attachment record (its blob goes when nothing else uses it)."""
    with app.session() as session:
        domain.delete(session, record_id)
    click.echo(f"attachment {record_id} deleted")
