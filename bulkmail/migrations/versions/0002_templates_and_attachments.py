"""templates and attachments

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger()


def upgrade() -> None:
    op.create_table(
        "attachment_blobs",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attachment_blobs")),
        sa.UniqueConstraint("sha256", name=op.f("uq_attachment_blobs_sha256")),
    )
    op.create_table(
        "templates",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
        sa.UniqueConstraint("name", name=op.f("uq_templates_name")),
    )
    op.create_table(
        "attachments",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("email_id", BIG_ID, nullable=True),
        sa.Column("template_id", BIG_ID, nullable=True),
        sa.Column("attachment_id", BIG_ID, nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("mime_type", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=True),
        sa.Column("order_number", sa.Integer(), nullable=False),
        sa.Column("content_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(email_id IS NULL) <> (template_id IS NULL)", name=op.f("ck_attachments_one_owner")
        ),
        sa.ForeignKeyConstraint(
            ["attachment_id"],
            ["attachment_blobs.id"],
            name=op.f("fk_attachments_attachment_id_attachment_blobs"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["email_id"],
            ["emails.id"],
            name=op.f("fk_attachments_email_id_emails"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.id"],
            name=op.f("fk_attachments_template_id_templates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attachments")),
    )
    op.create_index(
        op.f("ix_attachments_attachment_id"), "attachments", ["attachment_id"], unique=False
    )
    op.create_index(op.f("ix_attachments_email_id"), "attachments", ["email_id"], unique=False)
    op.create_index(
        op.f("ix_attachments_template_id"), "attachments", ["template_id"], unique=False
    )
    with op.batch_alter_table("emails") as batch:
        batch.create_index(op.f("ix_emails_template_id"), ["template_id"], unique=False)
        batch.create_foreign_key(
            op.f("fk_emails_template_id_templates"),
            "templates",
            ["template_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("emails") as batch:
        batch.drop_constraint(op.f("fk_emails_template_id_templates"), type_="foreignkey")
        batch.drop_index(op.f("ix_emails_template_id"))
    op.drop_index(op.f("ix_attachments_template_id"), table_name="attachments")
    op.drop_index(op.f("ix_attachments_email_id"), table_name="attachments")
    op.drop_index(op.f("ix_attachments_attachment_id"), table_name="attachments")
    op.drop_table("attachments")
    op.drop_table("templates")
    op.drop_table("attachment_blobs")
