"""Which instance runs each scheduled run (so the leader can close the runs of a dead one), when each
meta value was last written (so `followed:` thread marks can be pruned), and the budget holds of the
replies under way (shared by the instances on PostgreSQL).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedule_runs") as batch:
        batch.add_column(sa.Column("instance", sa.String(64)))
    with op.batch_alter_table("meta") as batch:
        batch.add_column(sa.Column("updated_at", sa.Float))
    # Values from before count as written now: a thread mark is kept for another 7 days.
    op.execute(sa.text("UPDATE meta SET updated_at = :now").bindparams(now=time.time()))
    op.create_table(
        "budget_holds",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("reservation", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("usd", sa.Float, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("instance", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_budget_holds_target", "budget_holds", ["scope", "target"])


def downgrade() -> None:
    op.drop_index("ix_budget_holds_target", "budget_holds")
    op.drop_table("budget_holds")
    with op.batch_alter_table("meta") as batch:
        batch.drop_column("updated_at")
    with op.batch_alter_table("schedule_runs") as batch:
        batch.drop_column("instance")
