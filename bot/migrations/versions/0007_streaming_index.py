"""A partial index on the replies still streaming, so the start-up and leader sweeps read only those rows.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STREAMING = sa.text("outcome = 'streaming'")


def upgrade() -> None:
    op.create_index("ix_turns_streaming", "turns", ["id"], sqlite_where=STREAMING, postgresql_where=STREAMING)


def downgrade() -> None:
    op.drop_index("ix_turns_streaming", table_name="turns")
