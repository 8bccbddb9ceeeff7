"""``bulkmail templates``: stored Jinja2 templates."""

from __future__ import annotations

import click

from bulkmail import mailboxes
from bulkmail import templates as domain
from cli import output
from cli.app import App, TextFile, json_option, pass_app


@click.group()
def templates() -> None:
    """Create, inspect, change, render and delete templates."""


@templates.command()
@click.option("--name", required=True)
@click.option(
    "--subject", required=True, help="Subject template, e.g. 'Hello {{ contact.first_name }}'."
)
@click.option("--html", type=TextFile(), required=True, help="HTML body template FILE.")
@click.option(
    "--text", type=TextFile(), help="Text body template FILE (derived from HTML if absent)."
)
@pass_app
def create(app: App, name: str, subject: str, html: str, text: str | None) -> None:
    """Validate and store a template; prints its id."""
    with app.session() as session:
        template = domain.create(session, name=name, subject=subject, html=html, text=text)
    click.echo(template.id)


@templates.command()
@click.argument("name")
@click.option("--subject")
@click.option("--html", type=TextFile(), help="New HTML body template FILE.")
@click.option("--text", type=TextFile(), help="New text body template FILE (empty file: derive).")
@pass_app
def update(app: App, name: str, subject: str | None, html: str | None, text: str | None) -> None:
    """Change parts of a template; the result is validated before it is stored."""
    with app.session() as session:
        domain.update(session, name, subject=subject, html=html, text=text)
    click.echo(f"template {name} updated")


@templates.command()
@click.argument("name")
@json_option
@pass_app
def show(app: App, name: str, as_json: bool) -> None:
    """Show one template."""
    with app.session() as session:
        data = domain.as_dict(domain.get(session, name))
    if as_json:
        output.emit_json(data)
    else:
        output.record(data, title=f"template {name}")


@templates.command(name="list")
@json_option
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List templates."""
    with app.session() as session:
        rows = [domain.as_dict(t) for t in domain.list_templates(session)]
    if as_json:
        output.emit_json(rows)
    else:
        output.table(
            rows,
            ["id", "name", "subject", "modified_at"],
            title="templates",
            wrap=("name", "subject"),
            optional=("modified_at",),
        )


@templates.command()
@click.argument("name")
@pass_app
def delete(app: App, name: str) -> None:
    """Delete a template (emails made from it keep their content and attachments)."""
    with app.session() as session:
        domain.delete(session, name)
    click.echo(f"template {name} deleted")


@templates.command()
@click.argument("name")
@click.option("--contact", "contact_address", required=True, metavar="ADDRESS")
@click.option("--from", "from_address", metavar="ADDRESS", help="Sender mailbox for {{ sender }}.")
@json_option
@pass_app
def render(
    app: App, name: str, contact_address: str, from_address: str | None, as_json: bool
) -> None:
    """Print subject, text and HTML as they would go out to one contact."""
    with app.session() as session:
        sender = mailboxes.find(session, from_address) if from_address else None
        rendered = domain.render_for(session, name, contact_address=contact_address, sender=sender)
    if as_json:
        output.emit_json(
            {"subject": rendered.subject, "text": rendered.text, "html": rendered.html}
        )
        return
    click.echo(f"Subject: {rendered.subject}\n\n--- text ---\n{rendered.text}\n--- html ---")
    click.echo(rendered.html)
