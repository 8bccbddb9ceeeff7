"""Alembic migrations: they own the schema; bulkmail.models mirrors it."""
