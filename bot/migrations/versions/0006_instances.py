"""Instances: each running Parley's heartbeat, and which instance owns each inbox row and each reply.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("author_id", sa.String(255)))
        batch.add_column(sa.Column("instance", sa.String(64)))
    op.create_index("ix_inbox_conversation_author", "inbox", ["conversation", "author_id", "state"])
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("instance", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("instance")
    op.drop_index("ix_inbox_conversation_author", "inbox")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("instance")
        batch.drop_column("author_id")
    op.drop_table("instances")
