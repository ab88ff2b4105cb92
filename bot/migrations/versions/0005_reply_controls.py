"""Reply controls and long conversations: an answer can be hidden from memory (replaced by a regenerated
one, or its question deleted or forgotten) while it stays stored, and a conversation keeps a running
summary of the turns that no longer fit the model's window.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("hidden", sa.String(16)))
    op.create_table(
        "summaries",
        sa.Column("conversation", sa.String(255), primary_key=True),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("upto", sa.Integer, nullable=False),
        sa.Column("model", sa.String(255)),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("summaries")
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("hidden")
