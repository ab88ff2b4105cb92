"""Reply controls: an answer can be hidden from memory (replaced by a regenerated one, or its question
deleted or forgotten) while it stays stored.

Revision ID: 0005
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("hidden", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("hidden")
