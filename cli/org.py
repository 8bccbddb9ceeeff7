"""``bulkmail org``: the organization's settings."""

from __future__ import annotations

import click

from bulkmail import organization
from cli import output
from cli.app import App, json_option, pass_app


@click.group()
def org() -> None:
    """Show or change the organization's settings."""


@org.command()
@json_option
@pass_app
def show(app: App, as_json: bool) -> None:
    """Show approval requirements and the upload size limit."""
    with app.session() as session:
        data = organization.as_dict(organization.get(session))
    if as_json:
        output.emit_json(data)
    else:
        output.record(data, title="organization")


@org.command(name="set")
@click.option("--require-approval-user/--no-require-approval-user", default=None)
@click.option("--require-approval-queue/--no-require-approval-queue", default=None)
@click.option("--max-upload-size", type=int, metavar="BYTES", help="Attachment size limit.")
@pass_app
def set_(
    app: App,
    require_approval_user: bool | None,
    require_approval_queue: bool | None,
    max_upload_size: int | None,
) -> None:
    """Change one or more settings."""
    with app.session() as session:
        data = organization.as_dict(
            organization.update(
                session,
                require_approval_user=require_approval_user,
                require_approval_queue=require_approval_queue,
                max_upload_size=max_upload_size,
            )
        )
    output.record(data, title="organization")
