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
    # Why memory no longer uses this turn while it stays stored: "replaced" (an earlier answer to a
    # question that was regenerated), "deleted" (its message was deleted), "forgotten" (/forget last).
    Column("hidden", String(16)),
    # The instance writing a reply still streaming: only a dead instance's replies are repaired.
    Column("instance", String(64)),
    Index("ix_turns_conversation_id", "conversation", "id"),
)
# Replies still streaming: few at any time, read at every start and by the leader's sweep to repair what
# a crash cut short, so the sweep reads only these rows, not every turn.
Index(
    "ix_turns_streaming",
    turns.c.id,
    sqlite_where=turns.c.outcome == "streaming",
    postgresql_where=turns.c.outcome == "streaming",
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
    Column("server", String(255)),  # the Discord server or Slack workspace it came from, if any
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

# A conversation's running summary of the turns that fell out of the model's window: every turn up to
# and including `upto` (a turn id) is in it.
summaries = Table(
    "summaries",
    metadata,
    Column("conversation", String(255), primary_key=True),
    Column("content", Text, nullable=False),
    Column("upto", Integer, nullable=False),
    Column("model", String(255)),
    Column("updated_at", Float, nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float),  # when it was last written: `followed:` thread marks are pruned by it
)

# What replies used: one row per reply and model (every provider call, failed attempts included), and one
# per reply and search backend. Kept apart from the turns, so /reset forgets the words, not the spending.
usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("inbox_id", Integer),  # the message the reply answered
    Column("platform", String(32), nullable=False),
    Column("server", String(255)),  # "platform:id" of the Discord server or Slack workspace
    Column("channel", String(255), nullable=False),  # "platform:channel", threads counted in their channel
    Column("conversation", String(255), nullable=False),
    Column("person", String(255), nullable=False),  # "platform:user id" of who asked
    Column("person_name", String(255), nullable=False, default=""),
    Column("kind", String(16), nullable=False),  # "model" or "search"
    Column("name", String(255), nullable=False),  # the model that answered, or the search backend
    Column("calls", Integer, nullable=False, default=0),  # provider calls, or searches made
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("cost", Float),  # USD; None when nothing said what it cost
    Column("created_at", Float, nullable=False),
    Index("ix_usage_person_created", "person", "created_at"),
    Index("ix_usage_channel_created", "channel", "created_at"),
    Index("ix_usage_server_created", "server", "created_at"),
    Index("ix_usage_created", "created_at"),
)

# Budgets managers set with /budget, over the `[budgets]` defaults.
budgets = Table(
    "budgets",
    metadata,
    Column("scope", String(16), primary_key=True),  # "channel" or "server"
    Column("target", String(255), primary_key=True),  # "platform:id"
    Column("period", String(8), primary_key=True),  # "daily" or "monthly"
    Column("unit", String(8), primary_key=True),  # "usd" or "tokens"
    Column("amount", Float),  # None: no limit here, whatever the default
    Column("updated_by", String(255)),
    Column("updated_at", Float),
)

# What the replies under way hold against their budgets, on PostgreSQL (several instances answer against
# one budget): a row per reply and target, deleted once its usage is recorded; an instance's rows stop
# counting when it dies.
budget_holds = Table(
    "budget_holds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reservation", String(32), nullable=False),  # one reply's hold
    Column("scope", String(16), nullable=False),  # person, channel or server
    Column("target", String(255), nullable=False),  # "platform:id"
    Column("usd", Float, nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("instance", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_budget_holds_target", "scope", "target"),
)

# Schedules: prompts that run on their own (`/schedule`), each run claimed once per fire time.
schedules = Table(
    "schedules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation", String(255), nullable=False),  # where it runs and posts
    Column("origin", String(255), nullable=False),  # where it was made (and is listed)
    Column("target_text", String(255)),  # the other channel it posts in, as it was named
    Column("prompt", Text, nullable=False),
    Column("when_text", String(255), nullable=False),  # as typed
    Column("kind", String(16), nullable=False),  # cron, interval or date
    Column("spec", String(255), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("anchor", Float, nullable=False),  # an interval counts from here
    Column("state", String(16), nullable=False),  # active, paused, done
    Column("next_run_at", Float),
    Column("failures", Integer, nullable=False, default=0),  # failed runs in a row
    Column("created_by", String(255), nullable=False),
    Column("created_by_name", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_schedules_origin", "origin"),
    Index("ix_schedules_conversation", "conversation"),
)

schedule_runs = Table(
    "schedule_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("schedule_id", Integer, ForeignKey("schedules.id", ondelete="CASCADE"), nullable=False),
    Column("fire_at", Float, nullable=False),  # the fire time it is the run of (now, for `run ID`)
    Column("kind", String(16), nullable=False),  # scheduled, catchup, manual, skipped
    Column("outcome", String(16), nullable=False),  # running, ok, cut_off, error, interrupted, skipped
    Column("reply", Text),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("instance", String(64)),  # the instance running it: a dead one's runs are closed by the leader
    # One run per schedule and fire time, whichever process claims it first.
    UniqueConstraint("schedule_id", "fire_at", name="uq_schedule_runs_fire"),
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

# Compare and arena: each blind comparison of two models on one question (`/compare`), and the votes on
# it. Which model shows as A is drawn at random and kept here; the names reach a voter after the vote.
comparisons = Table(
    "comparisons",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("inbox_id", Integer, nullable=False),  # the /compare message: a comparison runs once
    Column("server", String(255), nullable=False),  # "platform:id" of the server or workspace (or platform)
    Column("conversation", String(255), nullable=False),
    Column("question", Integer, nullable=False),  # the user turn both models answer
    Column("own_question", Boolean, nullable=False),  # the prompt was typed with /compare (else: reused)
    Column("after_turn", Integer, nullable=False),  # turns written after this one are the comparison's
    Column("asker_id", String(255), nullable=False),
    Column("model_a", String(255), nullable=False),
    Column("model_b", String(255), nullable=False),
    Column("state", String(16), nullable=False),  # running, ready (open to votes), failed
    Column("created_at", Float, nullable=False),
    UniqueConstraint("inbox_id", name="uq_comparisons_inbox"),
    Index("ix_comparisons_conversation", "conversation", "id"),
)

arena_votes = Table(
    "arena_votes",
    metadata,
    Column("comparison", Integer, ForeignKey("comparisons.id", ondelete="CASCADE"), primary_key=True),
    Column("voter_id", String(255), primary_key=True),  # one vote per person and comparison
    Column("choice", String(8), nullable=False),  # a, b, tie, bad
    Column("model_a", String(255), nullable=False),
    Column("model_b", String(255), nullable=False),
    Column("server", String(255), nullable=False),
    Column("conversation", String(255), nullable=False),
    Column("voter_name", String(255), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Index("ix_arena_votes_server", "server"),
)

# Prompt templates (/prompt) and personas (/persona), each by the server or workspace it belongs to
# (`scope`: see bot/templates.py) and a name.
prompt_templates = Table(
    "prompt_templates",
    metadata,
    Column("scope", String(255), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("body", Text, nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("created_by_name", String(255), nullable=False),
    Column("updated_at", Float, nullable=False),
)

personas = Table(
    "personas",
    metadata,
    Column("scope", String(255), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("model", String(255), nullable=False),
    Column("system_prompt", Text),
    Column("skills", Text, nullable=False),  # JSON: {skill: mode} for every skill installed when saved
    Column("created_by", String(255), nullable=False),
    Column("created_by_name", String(255), nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Per conversation, turns ever inserted and changes to memory under them, kept by triggers on `turns`
# (migration 0008): the in-memory windows of bot/windows.py read them to tell an append from a change.
turn_changes = Table(
    "turn_changes",
    metadata,
    Column("conversation", String(255), primary_key=True),
    Column("inserted", Integer, nullable=False, server_default="0"),
    Column("changed", Integer, nullable=False, server_default="0"),
)

# Platform request budgets shared by the instances (PostgreSQL only): a budget of `capacity` requests
# per window has `capacity` rows, each the time of one of its last requests, by the database's clock. A
# request takes a row last used a whole window ago, so no window ever holds more than `capacity`.
rate_slots = Table(
    "rate_slots",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("used_at", Float, nullable=False),
)
