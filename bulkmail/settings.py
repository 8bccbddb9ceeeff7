"""Settings: one object, read from ``BULKMAIL_*`` environment variables.

No other module reads ``os.environ``; callers pass a ``Settings`` (or use ``load()``).
"""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bulkmail import defaults, errors, headers, redaction

PREFIX = "BULKMAIL_"


# An http(s) base URL without query or fragment: unsubscribe paths are appended to it.
_PUBLIC_URL = re.compile(r"https?://[^\s/?#@]+(/[^\s?#]*)?")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:password@host:5432/db); unset: the "
        "embedded PostgreSQL of the working directory (bulkmail.db.database_url resolves it)",
    )
    broker_url: str = Field(
        default="memory://",
        description="Celery broker; memory:// runs tasks eagerly in the calling process",
    )
    smtp_url: str = Field(
        default="smtp://127.0.0.1:1025",
        description="Outgoing SMTP server, smtp://user:pass@host:port?starttls=true or smtps://",
    )
    message_id_domain: str = Field(
        default="",
        description="Domain of generated Message-IDs; empty uses the sender address's domain",
    )
    retry_first_seconds: float = Field(
        default=defaults.RETRY_FIRST_SECONDS,
        gt=0,
        description="Wait before the first retry of a 4xx or lost connection",
    )
    retry_max_seconds: float = Field(
        default=defaults.RETRY_MAX_SECONDS,
        gt=0,
        description="Longest wait between retries (the wait doubles)",
    )
    max_attempts: int = Field(
        default=defaults.MAX_ATTEMPTS, ge=1, description="Delivery attempts before giving up"
    )
    max_lifetime_seconds: float = Field(
        default=defaults.MAX_LIFETIME_SECONDS,
        gt=0,
        description="Age after which an email is no longer retried",
    )
    batch: int = Field(
        default=defaults.BATCH, ge=1, le=10_000, description="Emails a poller claims per round"
    )
    completion_batch: int = Field(
        default=defaults.COMPLETION_BATCH,
        ge=1,
        le=10_000,
        description="Messages a poller has handed to SMTP without a committed outcome, at most: "
        "what a kill -9 may send twice",
    )
    lease_seconds: float = Field(
        default=defaults.LEASE_SECONDS,
        ge=1,
        description="How long a poller's claim is held before the reaper ends it",
    )
    grace_seconds: float = Field(
        default=defaults.GRACE_SECONDS,
        ge=0,
        description="After SIGTERM, how long a poller's rounds in flight may finish",
    )
    poll_interval: float = Field(
        default=defaults.POLL_INTERVAL_SECONDS,
        ge=0.05,
        description="How often an idle poller looks for due emails besides LISTEN/NOTIFY",
    )
    reap_interval: float = Field(
        default=defaults.REAP_INTERVAL_SECONDS,
        ge=0.1,
        description="How often each poller ends the claims whose lease expired",
    )
    smtp_rate_limit: float = Field(
        default=0.0,
        ge=0,
        description="Messages/second to the SMTP server shared by all pollers (Redis); 0 is off",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis for the shared SMTP rate limit and the per-provider throttling",
    )
    provider_throttling: bool = Field(
        default=False,
        description="Pollers keep per-provider limits and halve a provider's rate on deferrals, "
        "shared through Redis",
    )
    provider_domains: str = Field(
        default="",
        description="Recipient domains to providers, on top of the built-in rules: "
        "DOMAIN=PROVIDER pairs separated by commas (read where emails are created)",
    )
    provider_limits: str = Field(
        default="",
        description="Per-provider limits shared by all pollers, on top of the built-in ones: "
        "PROVIDER=RATE/CONNECTIONS pairs (messages/second, connections; 0 is no limit)",
    )
    throttle_deferrals: int = Field(
        default=defaults.THROTTLE_DEFERRALS,
        ge=1,
        description="Deferrals (421, 4xx 4.7.x) of a provider within the window that halve "
        "its rate",
    )
    throttle_window: float = Field(
        default=defaults.THROTTLE_WINDOW_SECONDS,
        gt=0,
        description="Seconds in which a provider's deferrals are counted",
    )
    throttle_cooldown: float = Field(
        default=defaults.THROTTLE_COOLDOWN_SECONDS,
        gt=0,
        description="Seconds a throttled provider stays at its halved rate before it recovers",
    )
    throttle_step: float = Field(
        default=defaults.THROTTLE_STEP_SECONDS,
        gt=0,
        description="After the cool-down, a provider's rate grows by a tenth of its limit every "
        "this many seconds until it is back at the limit",
    )
    expansion_batch: int = Field(
        default=5_000,
        ge=1,
        le=100_000,
        description="Contacts a bulk operation's expansion handles per transaction",
    )
    reconcile_stale_after: float = Field(
        default=300.0,
        ge=0,
        description="Seconds without progress after which a queued or expanding bulk operation "
        "is queued again",
    )
    reconcile_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between two runs of the reconciler (Celery beat)",
    )

    secret_key: str | None = Field(
        default=None,
        repr=False,
        description="Fernet key that encrypts incoming mailboxes' passwords in the database; "
        "unset: profiles must name a password file (--keep-file)",
    )
    public_url: str | None = Field(
        default=None,
        description="The web app's address as recipients reach it, e.g. https://mail.example.org; "
        "set: every bulk email carries one-click unsubscribe links under it (needs "
        "BULKMAIL_SECRET_KEY)",
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value and not _PUBLIC_URL.fullmatch(value):
            raise ValueError(
                "give the web app's address as recipients reach it, like https://mail.example.org"
            )
        return value or None

    unsubscribe_domain: str | None = Field(
        default=None,
        description="Domain of the mailto unsubscribe addresses, unsubscribe+TOKEN@domain, whose "
        "mail an incoming mailbox receives; set: every bulk email's List-Unsubscribe names one "
        "(needs BULKMAIL_SECRET_KEY)",
    )
    bounce_domain: str | None = Field(
        default=None,
        description="Domain of the return paths, bounces+TOKEN@domain, whose mail an incoming "
        "mailbox receives; set: every email goes out with MAIL FROM naming it (needs "
        "BULKMAIL_SECRET_KEY)",
    )

    @field_validator("unsubscribe_domain", "bounce_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            address = headers.normalize_address(f"postmaster@{value.strip()}", field="domain")
        except errors.InvalidInput:
            raise ValueError("give a domain name, like bounces.example.org") from None
        # Tagged addresses are compared in lower case, the domain as its A-label.
        return address.partition("@")[2].lower()

    inbound_poll_interval: float = Field(
        default=defaults.INBOUND_POLL_INTERVAL_SECONDS,
        ge=0.1,
        description="Seconds between two syncs of an incoming mailbox",
    )
    inbound_concurrency: int = Field(
        default=defaults.INBOUND_CONCURRENCY,
        ge=1,
        le=100,
        description="Mailboxes one inbound worker syncs at the same time",
    )
    inbound_lease_seconds: float = Field(
        default=defaults.INBOUND_LEASE_SECONDS,
        ge=1,
        description="How long an inbound worker holds a mailbox without renewing its lease",
    )
    inbound_backoff_max: float = Field(
        default=defaults.INBOUND_BACKOFF_MAX_SECONDS,
        ge=1,
        description="Longest wait before retrying a mailbox whose server failed (doubling)",
    )
    soft_bounce_limit: int = Field(
        default=3,
        ge=1,
        description="Soft bounces of a contact within the window that stop bulk email to it",
    )
    soft_bounce_window_days: float = Field(
        default=7.0, gt=0, description="The window soft bounces are counted in, in days"
    )
    history_days: float = Field(
        default=30.0,
        gt=0,
        description="Days of delivery attempts and per-minute rollups kept; Celery beat prunes "
        "older ones hourly (their totals are kept)",
    )
    web_token: SecretStr | None = Field(
        default=None,
        description="Token the dashboard asks for (required when it listens beyond loopback)",
    )
    web_actor: str | None = Field(
        default=None,
        description="Address of the system user the dashboard's actions are carried out as; "
        "unset: no actions",
    )
    web_db_connections: int = Field(
        default=10,
        ge=1,
        le=1_000,
        description="PostgreSQL connections one `bulkmail web` process holds at most; requests "
        "beyond them wait for one",
    )
    web_read_only: bool = Field(
        default=False, description="The dashboard shows no action and refuses every one"
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Token /metrics asks for instead of BULKMAIL_WEB_TOKEN; unset: the dashboard's",
    )


# Settings holding URLs, which may carry a password (user:password@host).
_URLS = ("database_url", "broker_url", "smtp_url", "redis_url")


def load() -> Settings:
    """The settings of this process, from its environment; one line naming each bad value.

    Values are shown with any password masked. A URL that would be misread (a raw ``/`` in
    its password, say) is refused here, before a library reads it and quotes it in an error.
    """
    try:
        loaded = Settings()
    except ValidationError as error:
        problems = [
            (
                "_".join(map(str, problem["loc"])),
                str(problem["input"]),
                problem["msg"].lower(),
            )
            for problem in error.errors()
        ]
    else:
        given = {name: value for name in _URLS if (value := getattr(loaded, name)) is not None}
        problems = [
            (name, value, problem)
            for name, value in given.items()
            if (problem := redaction.url_problem(value)) is not None
        ]
        if not problems:
            return loaded
    described = "; ".join(
        f"{PREFIX}{name.upper()}={redaction.redact_url(value)!r}: {problem}"
        for name, value, problem in problems
    )
    raise errors.InvalidInput(
        f"{described}; fix or unset the environment variable (see the README's Settings)"
    )
