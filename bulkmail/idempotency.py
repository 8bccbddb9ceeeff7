"""Idempotency keys of the HTTP API's creating calls: a retry gets the first answer.

The answer is stored in the transaction that created the record, so either both are there or
neither. A key reused for a different request is refused; a retry that races the first call
while it is still under way is refused too (the first call's answer is then the one to wait
for).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc, orm

from bulkmail import errors, headers, models

MAX_KEY_LENGTH = 200

Answer = tuple[int, Any]  # HTTP status, JSON body


def once(
    session: orm.Session,
    *,
    user_id: int,
    key: str,
    request: object,
    work: Callable[[], Answer],
) -> Answer:
    """``work``'s answer, or the answer the first call with ``key`` got."""
    key = headers.check_name("idempotency key", key, limit=MAX_KEY_LENGTH)
    fingerprint = hashlib.sha256(
        json.dumps(request, sort_keys=True, default=str).encode()
    ).hexdigest()
    earlier = session.get(models.ApiIdempotencyKey, (user_id, key))
    if earlier is not None:
        if earlier.fingerprint != fingerprint:
            raise errors.Conflict(
                f"the idempotency key {key!r} was used for a different request; nothing was "
                "stored: repeat that request exactly, or give a new key for a new one"
            )
        return earlier.status, earlier.body
    status, body = work()
    try:
        with session.begin_nested():
            session.add(
                models.ApiIdempotencyKey(
                    user_id=user_id, key=key, fingerprint=fingerprint, status=status, body=body
                )
            )
    except exc.IntegrityError:
        raise errors.Conflict(
            f"a request with the idempotency key {key!r} is under way; retry it to get its answer"
        ) from None
    return status, body
