"""What a reply looks up in the store before it starts, read in one store hop.

Each read is small and independent of the others: the conversation's settings and skill modes (its own
and, in a thread, its channel's), the budgets set with /budget for its channel and server, its running
summary, and what its window reads to be brought up to date (`Windows.read_ahead`: the turn counters and
the turns added since). A hop costs more than the queries in it (a thread hand-off on SQLite, a pooled
connection on PostgreSQL, and a wait behind whatever else is queued there, the interpreter lock
included), so a reply makes one of them instead of five. Nothing is cached: the next message reads what
is stored now, whichever instance changed it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from bot.models import ConversationKey, ConversationSettings
from bot.store import budget_overrides_of, settings_of, skill_modes_of, summary_of
from bot.windows import Ahead

# A conversation's stored settings rows and skill modes, its own first (then, in a thread, its channel's).
ConversationRows = tuple[list[dict[str, object]], list[dict[str, str]]]


@dataclass(frozen=True, slots=True)
class Lookups:
    settings: ConversationRows
    budget_overrides: list[dict[str, Any]]  # /budget's rows for the message's channel and server
    summary: tuple[str, int] | None  # the running summary and the last turn it covers
    window: Ahead | None  # what the conversation's window reads next, when it holds one


def settings_keys(key: ConversationKey) -> list[str]:
    """Where a conversation's settings come from: itself, then (a thread) its channel."""
    return [str(key), str(key.channel)] if key.thread_id else [str(key)]


def look_up(
    conn: Connection,
    key: ConversationKey,
    budget_targets: Sequence[tuple[str, str]],
    window: Callable[[Connection], Ahead] | None,
) -> Lookups:
    """Everything a reply in `key` looks up before it starts; `budget_targets`: /budget's for its message,
    `window`: its window's read ahead (`Windows.read_ahead`)."""
    return Lookups(
        look_up_settings(conn, key),
        budget_overrides_of(conn, budget_targets),
        summary_of(conn, str(key)),
        window(conn) if window is not None else None,
    )


def look_up_settings(conn: Connection, key: ConversationKey) -> ConversationRows:
    """The conversation's settings alone (for a command, or whether to answer at all)."""
    keys = settings_keys(key)
    return settings_of(conn, keys), skill_modes_of(conn, keys)


def conversation_settings(rows: ConversationRows, default_model: str) -> ConversationSettings:
    """Its own settings, else its channel's (a thread inherits until it chooses), else the defaults."""
    settings, skill_modes = rows
    merged: dict[str, object] = {}
    for row in reversed(settings):
        merged.update({name: value for name, value in row.items() if value is not None})
    modes: dict[str, str] = {}
    for chosen in reversed(skill_modes):
        modes.update(chosen)
    return ConversationSettings(
        model=str(merged.get("model") or default_model),
        system_prompt=str(merged["system_prompt"]) if merged.get("system_prompt") else None,
        autoreply=bool(merged.get("autoreply") or False),
        skills=modes,
    )
