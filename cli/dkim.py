"""``bulkmail dkim``: the keys that sign each sender domain's mail."""

from __future__ import annotations

import click

from bulkmail import signing
from cli import output
from cli.app import App, json_option, pass_app


@click.group()
def dkim() -> None:
    """DKIM signing keys, one per sender domain."""


@dkim.command()
@click.option("--domain", required=True, help="The From domain whose mail the key signs.")
@click.option("--selector", required=True, help="The DNS selector, e.g. mail2026.")
@click.option(
    "--key-file",
    required=True,
    help="An unencrypted PEM RSA private key (openssl genrsa 2048); the file stays where it is.",
)
@pass_app
def add(app: App, domain: str, selector: str, key_file: str) -> None:
    """Sign mail from DOMAIN with this key from now on (replacing its key)."""
    with app.session() as session:
        data = signing.as_dict(
            signing.add(session, domain=domain, selector=selector, key_file=key_file)
        )
    output.record(data, title="dkim key")


@dkim.command(name="list")
@json_option
@pass_app
def list_(app: App, as_json: bool) -> None:
    """The domains that sign, with their selectors and key files."""
    with app.session() as session:
        rows = [signing.as_dict(key) for key in signing.list_keys(session)]
    if as_json:
        output.emit_json(rows)
    else:
        output.table(rows, ["domain", "selector", "key_file", "created_at"], title="dkim keys")


@dkim.command()
@click.argument("domain")
@pass_app
def dns(app: App, domain: str) -> None:
    """Print the TXT record to publish for DOMAIN's key."""
    with app.session() as session:
        click.echo(signing.dns(session, domain))
