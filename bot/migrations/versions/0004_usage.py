"""Usage per reply, model and search backend; budgets set with /budget; the server a message came from.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("server", sa.String(255)))
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("inbox_id", sa.Integer),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("server", sa.String(255)),
        sa.Column("channel", sa.String(255), nullable=False),
        sa.Column("conversation", sa.String(255), nullable=False),
        sa.Column("person", sa.String(255), nullable=False),
        sa.Column("person_name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_usage_person_created", "usage", ["person", "created_at"])
    op.create_index("ix_usage_channel_created", "usage", ["channel", "created_at"])
    op.create_index("ix_usage_server_created", "usage", ["server", "created_at"])
    op.create_index("ix_usage_created", "usage", ["created_at"])
    op.create_table(
        "budgets",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("target", sa.String(255), primary_key=True),
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("unit", sa.String(8), primary_key=True),
        sa.Column("amount", sa.Float),
        sa.Column("updated_by", sa.String(255)),
        sa.Column("updated_at", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("budgets")
    op.drop_table("usage")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("server")
