"""Parley's tables as they are at the newest migration; `bot/migrations` builds them, step by step."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

turns = Table(
    "turns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    # A user turn's author; on an assistant turn, the person it answered.
    Column("author_id", String(255), nullable=False, default=""),
    Column("author_name", String(255), nullable=False, default=""),
    Column("content", Text, nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("model", String(255)),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cost", Float),
    Column("latency_ms", Integer),
    Column("outcome", String(16)),
    Column("created_at", Float, nullable=False),
    # The user turn an assistant turn answers: replies to several people run at once, so an answer is read
    # back right after its question, not where its row happened to land.
    Column("answers", Integer),
    # Where the reply is shown on its platform (JSON the adapter wrote), so a crash can be repaired there.
    Column("reply_refs", Text),
    # The instance writing a reply still streaming: only a dead instance's replies are repaired.
    Column("instance", String(64)),
    Index("ix_turns_conversation_id", "conversation", "id"),
)

conversation_settings = Table(
    "conversation_settings",
    metadata,
    Column("conversation", String(255), primary_key=True),
    Column("model", String(255)),
    Column("system_prompt", Text),
    Column("autoreply", Boolean),
    Column("updated_by", String(255)),
    Column("updated_at", Float),
)

skill_modes = Table(
    "skill_modes",
    metadata,
    Column("conversation", String(255), primary_key=True),
    Column("skill", String(64), primary_key=True),
    Column("mode", String(16), nullable=False),
    Column("updated_by", String(255)),
    Column("updated_at", Float),
)

inbox = Table(
    "inbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("platform", String(32), nullable=False),
    Column("channel", String(255), nullable=False),
    Column("thread", String(255)),
    Column("message_id", String(255), nullable=False),
    Column("conversation", String(255), nullable=False),
    Column("author", Text, nullable=False),  # JSON: id, name, manager flag, roles
    Column("text", Text, nullable=False),
    Column("is_direct", Boolean, nullable=False, default=False),
    Column("reply_to", Text),  # JSON the adapter needs to answer it
    Column("turn_id", Integer),  # the user turn stored with it; none for commands and empty messages
    Column("state", String(16), nullable=False),  # pending, done, expired
    Column("received_at", Float, nullable=False),
    Column("done_at", Float),
    # The author's id, so one person's messages are answered in order across instances.
    Column("author_id", String(255)),
    # The instance answering it; a dead instance's pending rows are answered by a live one.
    Column("instance", String(64)),
    UniqueConstraint("platform", "channel", "message_id", name="uq_inbox_delivery"),
    Index("ix_inbox_state_id", "state", "id"),
    Index("ix_inbox_conversation_author", "conversation", "author_id", "state"),
)

inbox_files = Table(
    "inbox_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("inbox_id", Integer, ForeignKey("inbox.id", ondelete="CASCADE"), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(255)),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary),
    Column("unavailable_reason", Text),
    Index("ix_inbox_files_inbox_id", "inbox_id"),
)

meta = Table(
    "meta",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("value", Text, nullable=False),
)

# Each running Parley (an instance) and its heartbeat, by the database's clock: an instance whose
# heartbeat stopped is dead, and what it left unfinished is taken over.
instances = Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)
