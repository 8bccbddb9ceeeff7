"""Unsubscribe (RFC 8058, RFC 2369): the links in each bulk email, and what using one does.

A link's token is the email id and an HMAC-SHA256 of it, keyed with a key derived from
``BULKMAIL_SECRET_KEY``: nobody can make the token of another email, and a new secret key voids
every link sent before it. Beside the one-click URL, a mailto link names an address that is
just as signed (``tagged``), for mail arriving at an incoming mailbox.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import db, errors, models, settings, tagged, tally
from bulkmail.status import State, Status

# The secret key also encrypts incoming passwords; the label keeps this key apart from that use.
_LABEL = b"bulkmail one-click unsubscribe"
_TOKEN = re.compile(r"([1-9][0-9]{0,18})-([A-Za-z0-9_-]{22})")
ONE_CLICK = ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
# The gate between unsubscribes and expansions (advisory lock keys "unsb", 0): an expansion
# writes each batch holding it shared, an unsubscribe takes it alone; see gate_shared.
_GATE = {"space": 0x756E7362, "key": 0}
_GATE_SHARED = sa.text("SELECT pg_advisory_xact_lock_shared(:space, :key)")
_GATE_ALONE = sa.text("SELECT pg_advisory_xact_lock(:space, :key)")
E = models.Email
C = models.Contact


@dataclass(frozen=True, kw_only=True, slots=True)
class Links:
    """Makes and checks the unsubscribe links of one installation."""

    base_url: str | None  # the web app's public URL, without a trailing slash; None: no URL
    key: bytes
    mailto: tagged.Tagged | None = None  # the unsubscribe+TOKEN@domain addresses, if any

    @classmethod
    def from_settings(cls, config: settings.Settings) -> Links | None:
        """The links, or None when neither ``BULKMAIL_PUBLIC_URL`` nor
        ``BULKMAIL_UNSUBSCRIBE_DOMAIN`` is set (emails then carry none)."""
        if not config.public_url and not config.unsubscribe_domain:
            return None
        if not config.secret_key:
            named = "BULKMAIL_PUBLIC_URL" if config.public_url else "BULKMAIL_UNSUBSCRIBE_DOMAIN"
            raise errors.InvalidInput(
                f"{named} is set but BULKMAIL_SECRET_KEY is not: unsubscribe links "
                "are signed with it; set both, or neither"
            )
        key = hmac.new(config.secret_key.encode(), _LABEL, hashlib.sha256).digest()
        mailto = tagged.Tagged.from_settings(
            config,
            prefix="unsubscribe",
            domain=config.unsubscribe_domain,
            setting="UNSUBSCRIBE_DOMAIN",
        )
        base_url = config.public_url.rstrip("/") if config.public_url else None
        return cls(base_url=base_url, key=key, mailto=mailto)

    def token(self, email_id: int) -> str:
        return f"{email_id}-{self._mac(email_id)}"

    def url(self, email_id: int) -> str:
        """The link for a visible footer: the one-click page, else the mailto link."""
        if self.base_url is None:
            assert self.mailto is not None  # from_settings makes no Links with neither
            return f"mailto:{self.mailto.address(email_id)}"
        return f"{self.base_url}/u/{self.token(email_id)}"

    def headers(self, email_id: int) -> tuple[tuple[str, str], ...]:
        """The fields every bulk email carries: List-Unsubscribe with the URL and the mailto
        link that are set, and List-Unsubscribe-Post where there is a URL to POST to."""
        links = []
        if self.base_url is not None:
            links.append(f"<{self.base_url}/u/{self.token(email_id)}>")
        if self.mailto is not None:
            links.append(f"<mailto:{self.mailto.address(email_id)}>")
        fields = (("List-Unsubscribe", ", ".join(links)),)
        return (*fields, ONE_CLICK) if self.base_url is not None else fields

    def email_id(self, token: str) -> int | None:
        """The email a token was made for, or None for a token this key did not make."""
        return tagged.verified(_TOKEN.fullmatch(token), self._mac)

    def _mac(self, email_id: int) -> str:
        return base64.urlsafe_b64encode(tagged.mac(self.key, email_id)).decode().rstrip("=")


def gate_shared(connection: sa.Connection) -> None:
    """Hold the gate shared until the transaction ends: for an expansion writing a batch, which
    then reads which of its contacts opted out.

    An unsubscribe holds the gate alone while it opts the contact out and cancels their pending
    emails (``gate_alone``). So a batch either holds the gate first, and the unsubscribe (which
    waits for it) cancels its emails, or reads the opt-out after the unsubscribe committed, and
    leaves the contact out.
    """
    connection.execute(_GATE_SHARED, _GATE)


def gate_alone(session: orm.Session) -> None:
    """Hold the gate alone until the transaction ends (again is a no-op), waiting for the
    batches being written. Take it before anything else a batch's writer may wait for (the
    bulk operations' rows), or the two would wait for each other."""
    session.execute(_GATE_ALONE, _GATE)


@dataclass(frozen=True, kw_only=True, slots=True)
class Unsubscribed:
    """What one use of a link did."""

    contact_id: int
    first: bool  # False: the contact had unsubscribed before, and nothing changed
    canceled: int  # the contact's Pending Send bulk emails canceled now


def apply(session: orm.Session, email_id: int, *, by: str = "one-click") -> Unsubscribed:
    """Stop bulk email to the contact the email went to, and cancel what still waits for them;
    ``by`` says how (one-click, mail) in the recorded reason.

    Repeating it changes nothing: the first use is the one recorded.
    """
    gate_alone(session)
    email = session.get(E, email_id)
    if email is None or email.regarding_contact_id is None:
        raise errors.NotFound("this unsubscribe link names no recipient any more")
    contact_id, operation_id = email.regarding_contact_id, email.bulk_operation_id
    now = models.utcnow()
    reason = f"unsubscribed by {by} from email {email_id}" + (
        f" of bulk operation {operation_id}" if operation_id is not None else ""
    )
    first = session.execute(
        sa.update(C)
        .where(C.id == contact_id, C.unsubscribed_at.is_(None))
        .values(
            do_not_bulk_email=True,
            # A hard bounce or complaint stopped it first: that reason stays.
            do_not_bulk_email_reason=sa.func.coalesce(C.do_not_bulk_email_reason, reason),
            unsubscribed_at=now,
            unsubscribed_email_id=email_id,
            unsubscribed_operation_id=operation_id,
            modified_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    # Emails a poller holds (Sending) are skipped: they may be with the SMTP server already.
    pending = (
        sa.select(E.id)
        .where(
            E.regarding_contact_id == contact_id,
            E.bulk_operation_id.is_not(None),
            E.statuscode == int(Status.PENDING_SEND),
        )
        .with_for_update(skip_locked=True, key_share=True)
    )
    canceled = (
        session.execute(
            sa.update(E)
            .where(E.id.in_(pending.scalar_subquery()))
            .values(statuscode=int(Status.CANCELED), statecode=int(State.CANCELED), modified_at=now)
            .returning(E.bulk_operation_id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    counters = tally.Tally()
    counters.move_each(canceled, Status.PENDING_SEND, Status.CANCELED)
    counters.write(session, now=now)
    return Unsubscribed(
        contact_id=contact_id, first=db.rowcount(first) == 1, canceled=len(canceled)
    )
