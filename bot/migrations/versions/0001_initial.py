"""The schema Parley created before it had migrations: turns, settings, event claims, meta.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("conversation", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("author_id", sa.String(255), nullable=False),
        sa.Column("author_name", sa.String(255), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("model", sa.String(255)),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("cost", sa.Float),
        sa.Column("latency_ms", sa.Integer),
        sa.Column("outcome", sa.String(16)),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_turns_conversation_id", "turns", ["conversation", "id"])
    op.create_table(
        "conversation_settings",
        sa.Column("conversation", sa.String(255), primary_key=True),
        sa.Column("model", sa.String(255)),
        sa.Column("system_prompt", sa.Text),
        sa.Column("search_mode", sa.String(8)),
        sa.Column("autoreply", sa.Boolean),
        sa.Column("updated_by", sa.String(255)),
        sa.Column("updated_at", sa.Float),
    )
    op.create_table(
        "event_claims",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "meta",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("meta", "event_claims", "conversation_settings", "turns"):
        op.drop_table(table)
