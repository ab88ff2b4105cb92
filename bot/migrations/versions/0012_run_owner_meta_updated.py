"""Which instance runs each scheduled run (so the leader can close the runs of a dead one), and when each
meta value was last written (so `followed:` thread marks can be pruned).

Revision ID: 0012
Revises: 0006
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedule_runs") as batch:
        batch.add_column(sa.Column("instance", sa.String(64)))
    with op.batch_alter_table("meta") as batch:
        batch.add_column(sa.Column("updated_at", sa.Float))
    # Values from before count as written now: a thread mark is kept for another 7 days.
    op.execute(sa.text("UPDATE meta SET updated_at = :now").bindparams(now=time.time()))


def downgrade() -> None:
    with op.batch_alter_table("meta") as batch:
        batch.drop_column("updated_at")
    with op.batch_alter_table("schedule_runs") as batch:
        batch.drop_column("instance")
