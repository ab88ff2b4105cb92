"""What a reply looks up in the store before it starts, read in one store hop.

Each read is small and independent of the others: the conversation's settings and skill modes (its own
and, in a thread, its channel's), the budgets set with /budget for its channel and server, its running
summary, and what its window reads to be brought up to date (`Windows.read_ahead`: the turn counters and
the turns added since). A hop costs more than the queries in it (a thread hand-off on SQLite, a pooled
connection on PostgreSQL, and a wait behind whatever else is queued there, the interpreter lock
included), so a reply makes one of them instead of five. Nothing is cached: the next message reads what
is stored now, whichever instance changed it.

On PostgreSQL every statement's work is the event loop's own, and a hop waits for a pooled connection:
with a thousand messages at once, a look-up each held a connection for five statements, each waiting a
pass of the loop that streams the first replies, and the look-ups kept the pool from the others. There
every look-up asked for while a batch is out goes into the next one (`LookUpBatches`), which reads each kind
once for all of them (bot/batches.py): a burst's look-ups take a few hops instead of one hop each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Connection

from bot.batches import Batches
from bot.models import ConversationKey, ConversationSettings
from bot.store import (
    Store,
    budget_overrides_of,
    budgets_of_targets,
    settings_by_conversation,
    settings_of,
    skill_modes_by_conversation,
    skill_modes_of,
    summaries_by_conversation,
    summary_of,
)
from bot.windows import Ahead, ReadAhead, read_ahead_many

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


@dataclass(frozen=True, slots=True)
class LookUp:
    """What a reply reads before it starts: `look_up`'s arguments, read in a store hop of the caller's
    (`read`) or in a batch with others (`LookUpBatches`)."""

    key: ConversationKey
    budget_targets: Sequence[tuple[str, str]]
    window: ReadAhead | None

    def read(self, conn: Connection) -> Lookups:
        return look_up(conn, self.key, self.budget_targets, self.window)


class LookUpBatches:
    """A reply's look-up: its own store hop on SQLite; on PostgreSQL, batched with every other look-up
    asked for while one is out (bot/batches.py)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._batches: Batches[LookUp, Lookups] = Batches(self._read, "look-ups")

    async def __call__(self, asked: LookUp) -> Lookups:
        """What `asked` reads; raises what the store raised for the batch it went in."""
        if not self._store.shared:
            return await self._store.read(asked.read)
        return await self._batches(asked)

    async def _read(self, asked: list[LookUp]) -> list[Lookups]:
        return await self._store.read(partial(look_up_many, asked=asked))


def look_up_many(conn: Connection, asked: Sequence[LookUp]) -> list[Lookups]:
    """What `look_up` reads, for every one of `asked`, in one statement per kind (PostgreSQL)."""
    keys = [settings_keys(one.key) for one in asked]
    every = sorted({key for some in keys for key in some})
    settings = settings_by_conversation(conn, every)
    modes = skill_modes_by_conversation(conn, every)
    targets = sorted({target for one in asked for _, target in one.budget_targets})
    budgets = budgets_of_targets(conn, targets) if targets else []
    summaries = summaries_by_conversation(conn, sorted({str(one.key) for one in asked}))
    reads = iter(read_ahead_many(conn, [one.window for one in asked if one.window is not None]))
    found = []
    for one, some in zip(asked, keys, strict=True):
        wanted = set(one.budget_targets)
        found.append(
            Lookups(
                ([settings[key] for key in some if key in settings], [modes.get(key, {}) for key in some]),
                [row for row in budgets if (row["scope"], row["target"]) in wanted],
                summaries.get(str(one.key)),
                next(reads) if one.window is not None else None,
            )
        )
    return found


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
