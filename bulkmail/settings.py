"""Settings: one object, read from ``BULKMAIL_*`` environment variables.

No other module reads ``os.environ``; callers pass a ``Settings`` (or use ``load()``).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BULKMAIL_", frozen=True, extra="ignore")

    database_url: str = Field(
        default="sqlite:///bulkmail.db",
        description="SQLAlchemy URL of the database; PostgreSQL: postgresql+psycopg://...",
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


def load() -> Settings:
    """The settings of this process, from its environment."""
    return Settings()
