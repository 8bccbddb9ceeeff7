"""API tokens: each acts as one system user, with that user's privileges.

A token is shown once, when it is created; only its SHA-256 is stored, so a copy of the
database lets no one call the API. A revoked or expired token is refused like a wrong one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

import sqlalchemy as sa
from sqlalchemy import orm

from bulkmail import errors, headers, mailboxes, models

# Every token starts with this: the web app tells a user's token from the dashboard's by it,
# and a secret scanner can find one that leaked.
PREFIX = "bmk_"
_DAYS = re.compile(r"(\d{1,5})d")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_api_token(value: str | None) -> bool:
    return value is not None and value.startswith(PREFIX)


def parse_expiry(value: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``30d`` (days from now) or an ISO 8601 time with its offset (a date is midnight UTC)."""
    now = now or models.utcnow()
    days = _DAYS.fullmatch(value.strip())
    if days:
        return now + dt.timedelta(days=int(days.group(1)))
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise errors.InvalidInput(
            f"expiry {value!r} is neither a number of days (30d) nor an ISO 8601 time "
            "(2027-01-31T00:00:00+00:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    if moment <= now:
        raise errors.InvalidInput(f"expiry {value} is in the past; give a later time")
    return moment


def create(
    session: orm.Session, *, user: str, name: str, expires_at: dt.datetime | None = None
) -> tuple[models.ApiToken, str]:
    """A new token for the system user ``user`` (an address); returns it with its secret."""
    owner = mailboxes.find(session, user)
    if not isinstance(owner, models.SystemUser):
        raise errors.InvalidInput(f"{owner.email} is a queue; tokens belong to system users")
    secret = PREFIX + secrets.token_urlsafe(32)
    token = models.ApiToken(
        user_id=owner.id,
        name=headers.check_name("name", name),
        token_hash=_hash(secret),
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return token, secret


def list_tokens(session: orm.Session, *, user: str | None = None) -> list[models.ApiToken]:
    query = sa.select(models.ApiToken).order_by(models.ApiToken.id)
    if user is not None:
        query = query.where(models.ApiToken.user_id == mailboxes.find(session, user).id)
    return list(session.scalars(query))


def revoke(session: orm.Session, token_id: int) -> models.ApiToken:
    token = session.get(models.ApiToken, token_id)
    if token is None:
        raise errors.NotFound(
            f"no API token has the id {token_id}; see `bulkmail users token list`"
        )
    if token.revoked_at is None:
        token.revoked_at = models.utcnow()
        session.flush()
    return token


def authenticate(
    session: orm.Session, secret: str, *, now: dt.datetime | None = None
) -> tuple[models.ApiToken, models.SystemUser]:
    """The token and user ``secret`` stands for; ``Unauthenticated`` when it is none (wrong,
    revoked or expired: the message says which, never the secret)."""
    now = now or models.utcnow()
    found = session.execute(
        sa.select(models.ApiToken, models.SystemUser)
        .join(models.SystemUser, models.SystemUser.id == models.ApiToken.user_id)
        .where(models.ApiToken.token_hash == _hash(secret))
    ).one_or_none()
    if found is None:
        raise errors.Unauthenticated(
            "the API token is not valid; create one with `bulkmail users token create`"
        )
    token, user = found.tuple()
    if token.revoked_at is not None:
        raise errors.Unauthenticated(f"the API token {token.id} was revoked; create a new one")
    if token.expires_at is not None and token.expires_at <= now:
        raise errors.Unauthenticated(f"the API token {token.id} expired; create a new one")
    return token, user


def as_dict(token: models.ApiToken, user_email: str) -> dict[str, object]:
    return {
        "id": token.id,
        "user": user_email,
        "name": token.name,
        "created_at": token.created_at.isoformat(),
        "expires_at": models.isoformat(token.expires_at),
        "revoked_at": models.isoformat(token.revoked_at),
    }
