"""The durable inbox, per-skill modes (web search's mode moves there) and reply references on turns.

Slack's event claims fold into the inbox, which dedupes every platform's deliveries, and the threads
Slack followed are marked the way every platform's are.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("answers", sa.Integer))
        batch.add_column(sa.Column("reply_refs", sa.Text))
    op.create_table(
        "skill_modes",
        sa.Column("conversation", sa.String(255), primary_key=True),
        sa.Column("skill", sa.String(64), primary_key=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("updated_by", sa.String(255)),
        sa.Column("updated_at", sa.Float),
    )
    op.execute(
        "INSERT INTO skill_modes (conversation, skill, mode, updated_by, updated_at) "
        "SELECT conversation, 'web_search', search_mode, updated_by, updated_at "
        "FROM conversation_settings WHERE search_mode IS NOT NULL"
    )
    with op.batch_alter_table("conversation_settings") as batch:
        batch.drop_column("search_mode")
    op.create_table(
        "inbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(255), nullable=False),
        sa.Column("thread", sa.String(255)),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("conversation", sa.String(255), nullable=False),
        sa.Column("author", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("is_direct", sa.Boolean, nullable=False),
        sa.Column("reply_to", sa.Text),
        sa.Column("turn_id", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("done_at", sa.Float),
        sa.UniqueConstraint("platform", "channel", "message_id", name="uq_inbox_delivery"),
    )
    op.create_index("ix_inbox_state_id", "inbox", ["state", "id"])
    op.create_table(
        "inbox_files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("inbox_id", sa.Integer, sa.ForeignKey("inbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(255)),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary),
        sa.Column("unavailable_reason", sa.Text),
    )
    op.create_index("ix_inbox_files_inbox_id", "inbox_files", ["inbox_id"])
    op.drop_table("event_claims")
    # Threads Parley follows are marked for every platform alike now.
    op.execute(
        "UPDATE meta SET name = 'followed:slack:' || substr(name, 14) WHERE name LIKE 'slack:thread:%'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE meta SET name = 'slack:thread:' || substr(name, 16) WHERE name LIKE 'followed:slack:%'"
    )
    op.create_table(
        "event_claims",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.drop_table("inbox_files")
    op.drop_table("inbox")
    with op.batch_alter_table("conversation_settings") as batch:
        batch.add_column(sa.Column("search_mode", sa.String(8)))
    op.execute(
        "UPDATE conversation_settings SET search_mode = (SELECT mode FROM skill_modes "
        "WHERE skill_modes.conversation = conversation_settings.conversation "
        "AND skill_modes.skill = 'web_search')"
    )
    op.drop_table("skill_modes")
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("reply_refs")
        batch.drop_column("answers")
