"""Compare and arena: blind comparisons of two models on one question, and the votes on them.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("inbox_id", sa.Integer, nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("conversation", sa.String(255), nullable=False),
        sa.Column("question", sa.Integer, nullable=False),
        sa.Column("own_question", sa.Boolean, nullable=False),
        sa.Column("after_turn", sa.Integer, nullable=False),
        sa.Column("asker_id", sa.String(255), nullable=False),
        sa.Column("model_a", sa.String(255), nullable=False),
        sa.Column("model_b", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("inbox_id", name="uq_comparisons_inbox"),
    )
    op.create_index("ix_comparisons_conversation", "comparisons", ["conversation", "id"])
    op.create_table(
        "arena_votes",
        sa.Column(
            "comparison",
            sa.Integer,
            sa.ForeignKey("comparisons.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("voter_id", sa.String(255), primary_key=True),
        sa.Column("choice", sa.String(8), nullable=False),
        sa.Column("model_a", sa.String(255), nullable=False),
        sa.Column("model_b", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("conversation", sa.String(255), nullable=False),
        sa.Column("voter_name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_arena_votes_server", "arena_votes", ["server"])


def downgrade() -> None:
    op.drop_index("ix_arena_votes_server", "arena_votes")
    op.drop_table("arena_votes")
    op.drop_index("ix_comparisons_conversation", "comparisons")
    op.drop_table("comparisons")
