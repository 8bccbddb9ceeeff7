"""The organization's settings: approval requirements and the attachment size limit."""

from __future__ import annotations

from sqlalchemy import orm

from bulkmail import errors, models


def get(session: orm.Session) -> models.Organization:
    org = session.get(models.Organization, 1)
    if org is None:
        # The first migration inserts the row; its absence means the schema was built otherwise.
        raise errors.SchemaMissing("the organization row is missing; run `bulkmail db upgrade`")
    return org


def update(
    session: orm.Session,
    *,
    require_approval_user: bool | None = None,
    require_approval_queue: bool | None = None,
    max_upload_size: int | None = None,
) -> models.Organization:
    """Change the given settings; ``None`` leaves a setting as it is."""
    org = get(session)
    if max_upload_size is not None:
        if not 1 <= max_upload_size <= models.MAX_UPLOAD_SIZE_LIMIT:
            raise errors.InvalidInput(
                f"max upload size {max_upload_size:,} bytes is out of range; "
                f"give 1 to {models.MAX_UPLOAD_SIZE_LIMIT:,} bytes"
            )
        org.max_upload_size = max_upload_size
    if require_approval_user is not None:
        org.require_approval_user = require_approval_user
    if require_approval_queue is not None:
        org.require_approval_queue = require_approval_queue
    session.flush()
    return org


def as_dict(org: models.Organization) -> dict[str, object]:
    return {
        "require_approval_user": org.require_approval_user,
        "require_approval_queue": org.require_approval_queue,
        "max_upload_size": org.max_upload_size,
        "modified_at": org.modified_at.isoformat(),
    }
