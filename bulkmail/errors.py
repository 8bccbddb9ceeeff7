"""The package's exceptions: one base, so every caller can catch bulkmail's errors alone.

Each message says what was wrong and, where there is one, what to do about it: the CLI prints
it as the single line a user sees.
"""


class BulkmailError(Exception):
    """Base of every error bulkmail raises on purpose."""


class InvalidInput(BulkmailError, ValueError):
    """A value given by a user or a caller cannot be accepted as it is."""


class NotFound(BulkmailError, LookupError):
    """The named record does not exist."""


class Conflict(BulkmailError):
    """The request contradicts what is stored (a duplicate name, an email in the wrong state)."""


class TransitionError(Conflict):
    """A status move that the email status machine does not allow."""


class Unauthenticated(BulkmailError):
    """No valid credential: a missing, wrong, revoked or expired API token."""


class PermissionDenied(BulkmailError, PermissionError):
    """The acting user lacks the privilege the operation needs."""


class BrokerUnavailable(BulkmailError, ConnectionError):
    """The message broker cannot be reached; what was stored stays stored."""


class SchemaMissing(BulkmailError):
    """The database has no bulkmail schema, or an older one."""
