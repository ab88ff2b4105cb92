"""Each conversation's recent turns, kept in memory so a reply finds its window's cut without reading every
turn that fits: a reply reads only what is new since the one before.

Whether the turns held are still the conversation's comes from `turn_changes`, which triggers on `turns`
keep for every writer (this process, another instance, any code path): `inserted` counts the turns ever
added to a conversation and `changed` counts edits, hidden exchanges, regenerations and deletions. Each
reply reads both numbers and the turns added since the newest one held, plus the turns it saw streaming
(a reply's row is written while it streams and counts in memory once it finishes). When `changed` moved,
or the turns read do not account for every insert (one committed out of order), the window is read again
from the store. Held turns are bounded by a byte cap shared by all conversations, least recently used
dropped first; a conversation that was dropped, or whose window needs older turns than are held (a model
with a larger context), is read again too.

A reply makes that read in the same store hop as the rest of what it looks up (bot/lookups.py), before it
takes the window's lock; the read is used only if the window did not change in between (another reply in
the conversation brought it up to date first), else it is made again. For a conversation with no window
held, that read is the newest few turns: when they are all the conversation has (a new conversation, a
short one), they fill the window, and the reply makes no read of its own.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Connection, Integer, Select, String, any_, bindparam, func, or_, select, true
from sqlalchemy.dialects import postgresql

from bot.providers.base import ChatMessage
from bot.schema import turn_changes, turns
from bot.store import CONTEXT_COLUMNS, Store, Turn, context_order, context_turn

FIRST_PAGE = 256  # turns the first query of a read reads; each later one reads twice as many
AHEAD_PAGE = 32  # turns read ahead for a window not held: a conversation this short fills it at once
HELD_OVER = 1.25  # a window holds this many times the budget it was read for, for turns still to come
TRIM_AT = 2.0  # past this many times the last budget, the oldest turns held are let go
ROW_BYTES = 200  # what a held turn costs besides its text, roughly

_COLUMNS = (*CONTEXT_COLUMNS, turns.c.hidden)  # a window reads hidden turns too, to count every insert


@dataclass(frozen=True, slots=True)
class _Held:
    turn: Turn
    answers: int | None  # the question it answers, for an assistant turn
    # What the model is sent for it, made once (providers keep its JSON meanwhile); None: says nothing.
    message: ChatMessage | None
    size: int


def chat_message(turn: Turn) -> ChatMessage | None:
    """A turn as the model reads it: a person's words under their name; None for a turn that says
    nothing (it is not sent)."""
    if not turn.content:
        return None
    if turn.role == "user":
        return ChatMessage(
            "user", f"{turn.author_name}: {turn.content}" if turn.author_name else turn.content
        )
    return ChatMessage("assistant", turn.content)


@dataclass(frozen=True, slots=True)
class Recalled:
    """A reply's turns, whether older ones were left out, and the model's message for each (made once
    while a window holds the turn, so that providers keep its JSON)."""

    turns: list[Turn]
    trimmed: bool
    messages: list[ChatMessage | None]  # one for each turn, None for those that say nothing
    tokens: int  # what the turns count, in estimate units (a window knows it without a walk)

    def chat_messages(self, newest: int) -> list[ChatMessage]:
        """The model's message for each of the `newest` turns that says something (what is left of the
        turns once the oldest are dropped to make room): a slice, without a Python loop."""
        return list(filter(None, self.messages[len(self.messages) - newest :]))  # a message is true


@dataclass(slots=True)
class _Read:
    """What one read of the store found: the counters, then turns (any state), newest last."""

    inserted: int
    changed: int
    rows: list[Any]
    complete: bool = False  # for a full read: it reached the conversation's first turn


@dataclass(frozen=True, slots=True)
class Ahead:
    """What a window's next read found, read in a store hop of the caller's (with what else a reply looks
    up) before the reply asks for its turns; used only if the window has not changed since."""

    window: _Window | None  # None: none was held, and `read` is the newest turns (`_newest`)
    version: int
    read: _Read


@dataclass(frozen=True, slots=True)
class ReadAhead:
    """The read a window makes next, as its values: one conversation's as a function of a connection,
    or many conversations' in one statement each (`read_ahead_many`, PostgreSQL)."""

    conversation: str
    window: _Window | None  # None: none is held, so the newest AHEAD_PAGE turns are read
    version: int
    newest: int  # the highest turn id the window has seen
    streaming: tuple[int, ...]  # the turns it saw streaming

    def __call__(self, conn: Connection) -> Ahead:
        if self.window is None:
            return Ahead(None, 0, _newest(conn, self.conversation, AHEAD_PAGE))
        read = _since(conn, self.conversation, self.newest, list(self.streaming))
        return Ahead(self.window, self.version, read)


def _memory_order(held: _Held) -> tuple[int, int]:
    return context_order(held.turn.id, held.answers)


def _recalled(chosen: list[_Held], trimmed: bool) -> Recalled:
    turns = [held.turn for held in chosen]
    return Recalled(turns, trimmed, [held.message for held in chosen], sum(turn.tokens for turn in turns))


class _Window:
    def __init__(self) -> None:
        self.held: list[_Held] = []  # the turns memory uses from `floor` on, in id order
        self.turns: list[Turn] = []  # their turns and their messages, for slicing
        self.chat: list[ChatMessage | None] = []
        self.ids: list[int] = []  # their ids, for bisect
        self.sums: list[int] = [0]  # tokens held before each turn, and in all (differences count)
        self.misplaced = 0  # the newest turn that sorts before one with a lower id (a late answer)
        self._top = 0  # the highest sort key held
        self.streaming: set[int] = set()  # turns seen streaming: read again until they finish
        self.newest = 0  # the highest id seen in the conversation, in any state
        self.floor: int | None = None  # ids below it are not held; None: held from the first turn
        self.loaded = False  # until the first full read
        self.inserted = 0
        self.changed = 0
        self.tokens = 0
        self.size = 0
        self.lock = asyncio.Lock()  # one read and update at a time
        self.version = 0  # counts fills, updates and trims: a read made ahead is for one version

    def fill(self, read: _Read) -> None:
        """Start over from a full read."""
        self.version += 1
        self.held, self.turns, self.chat, self.ids = [], [], [], []
        self.streaming, self.floor = set(), None
        self.sums, self.misplaced, self._top = [0], 0, 0
        self.tokens = self.size = self.newest = 0
        self.inserted, self.changed, self.loaded = read.inserted, read.changed, True
        self._add(read.rows)
        self.floor = None if read.complete or not read.rows else read.rows[0].id

    def update(self, read: _Read) -> bool:
        """Add what is new; False when the read shows a change that only a full read can follow."""
        added = sum(1 for row in read.rows if row.id > self.newest)
        if read.changed != self.changed or self.inserted + added != read.inserted:
            return False
        self.version += 1
        self.streaming.difference_update(row.id for row in read.rows)
        self._add(read.rows)
        self.inserted = read.inserted
        return True

    def _add(self, rows: Sequence[Any]) -> None:
        for row in rows:
            self.newest = max(self.newest, row.id)
            if row.hidden is not None or (self.floor is not None and row.id < self.floor):
                continue
            if row.outcome == "streaming":
                self.streaming.add(row.id)
                continue
            turn = context_turn(row)
            # The text, the model's message and its JSON: about three copies of the content.
            message = chat_message(turn)
            held = _Held(turn, row.answers, message, 3 * len(row.content) + ROW_BYTES)
            self.tokens += turn.tokens
            self.size += held.size
            if not self.ids or row.id > self.ids[-1]:  # the usual case: a turn after all held
                self.held.append(held)
                self.turns.append(turn)
                self.chat.append(message)
                self.ids.append(row.id)
                self.sums.append(self.sums[-1] + turn.tokens)
                self._order(held)
                continue
            at = bisect.bisect_left(self.ids, row.id)  # a reply that finished after later turns
            if at < len(self.ids) and self.ids[at] == row.id:  # a turn read again replaces itself
                self.tokens -= self.held[at].turn.tokens
                self.size -= self.held[at].size
                self.held[at], self.turns[at], self.chat[at] = held, turn, message
            else:
                self.held.insert(at, held)
                self.turns.insert(at, turn)
                self.chat.insert(at, message)
                self.ids.insert(at, row.id)
            self._reindex()

    def _order(self, held: _Held) -> None:
        key = _memory_order(held)[0]
        if key < self._top:
            self.misplaced = held.turn.id
        self._top = max(self._top, key)

    def _reindex(self) -> None:
        self.sums, self.misplaced, self._top = [0], 0, 0
        for held in self.held:
            self.sums.append(self.sums[-1] + held.turn.tokens)
            self._order(held)

    def cut(self, budget: int, upto: int | None) -> Recalled | None:
        """As `Store.recall` chooses: the newest turns that fit, oldest first (an answer right after its
        question), and whether older ones were left out; None when older turns than are held are needed."""
        if not self.held:
            return Recalled([], False, [], 0) if self.floor is None else None
        if upto is None or self.ids[-1] <= upto:  # nothing held comes after the question: a suffix
            start = bisect.bisect_left(self.sums, self.sums[-1] - budget)
            if start == 0 and self.floor is not None:
                return None
            if start < len(self.ids) and self.misplaced >= self.ids[start]:  # else in memory's order
                return _recalled(sorted(self.held[start:], key=_memory_order), start > 0)
            tokens = self.sums[-1] - self.sums[start]
            return Recalled(self.turns[start:], start > 0, self.chat[start:], tokens)  # (slices, copied in C)
        return self._cut_before(budget, upto)

    def _cut_before(self, budget: int, upto: int) -> Recalled | None:
        """The cut for a question with turns after it (a regeneration, replies at once): turn by turn."""
        chosen: list[_Held] = []
        used = 0
        trimmed = False
        for held in reversed(self.held):
            turn, answers = held.turn, held.answers
            if not (turn.id <= upto or (answers is not None and answers < upto)):
                continue
            if used + turn.tokens > budget:
                trimmed = True
                break
            used += turn.tokens
            chosen.append(held)
        if not trimmed and self.floor is not None:
            return None
        chosen.sort(key=_memory_order)
        return _recalled(chosen, trimmed)

    def trim(self, budget: int) -> None:
        """Let the oldest turns go once far more is held than the last budget needs."""
        if self.tokens <= budget * TRIM_AT:
            return
        self.version += 1
        keep = budget * HELD_OVER
        start = 0
        while start < len(self.held) and self.tokens > keep:
            self.tokens -= self.held[start].turn.tokens
            self.size -= self.held[start].size
            start += 1
        self.floor = self.ids[start] if start < len(self.ids) else self.newest + 1
        del self.held[:start], self.turns[:start], self.chat[:start], self.ids[:start], self.sums[:start]
        self.streaming = {turn_id for turn_id in self.streaming if turn_id >= self.floor}


class Windows:
    """The windows of recently answered conversations, within `max_bytes` (0: none kept, every reply
    reads its turns from the store)."""

    def __init__(self, store: Store, max_bytes: int) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._bytes = 0
        # How windows were brought up to date, for tests and benches: read in full, read what was new,
        # or used what was new as read ahead.
        self.reads = {"full": 0, "new": 0, "ahead": 0}

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def read_ahead(self, conversation: str) -> ReadAhead | None:
        """The read the next `recall` of `conversation` makes, for a store hop of the caller's that reads
        other things too (call it with the hop's connection); None when no windows are kept."""
        if self._max_bytes <= 0:
            return None
        window = self._windows.get(conversation)
        if window is None or not window.loaded:
            return ReadAhead(conversation, None, 0, 0, ())
        return ReadAhead(conversation, window, window.version, window.newest, tuple(window.streaming))

    async def recall(
        self, conversation: str, budget: int, upto: int | None = None, ahead: Ahead | None = None
    ) -> Recalled:
        """What `Store.recall` answers, from memory where it holds the conversation (with `ahead`, the
        read `read_ahead` made, when it is still the one to make)."""
        if self._max_bytes <= 0:
            chosen, trimmed = await self._store.recall(conversation, budget, upto)
            tokens = sum(turn.tokens for turn in chosen)
            return Recalled(chosen, trimmed, [chat_message(turn) for turn in chosen], tokens)
        window = self._windows.get(conversation)
        if window is None:
            window = self._windows[conversation] = _Window()
        self._windows.move_to_end(conversation)
        async with window.lock:
            before = window.size
            recalled = await self._bring_up_to_date(conversation, window, budget, upto, ahead)
            window.trim(budget)
            if self._windows.get(conversation) is window:
                self._bytes += window.size - before
                self._evict()
        return recalled

    async def _bring_up_to_date(
        self, conversation: str, window: _Window, budget: int, upto: int | None, ahead: Ahead | None
    ) -> Recalled:
        if window.loaded:
            if ahead is not None and ahead.window is window and ahead.version == window.version:
                read = ahead.read
                self.reads["ahead"] += 1
            else:
                since = list(window.streaming)
                read = await self._store.read(
                    partial(_since, conversation=conversation, newest=window.newest, streaming=since)
                )
                self.reads["new"] += 1
            if window.update(read) and (cut := window.cut(budget, upto)) is not None:
                return cut
        elif ahead is not None and ahead.window is None and ahead.read.complete:
            self.reads["full"] += 1  # a full read after all, made ahead
            window.fill(ahead.read)
            if (cut := window.cut(budget, upto)) is not None:
                return cut
        wanted = max(int(budget * HELD_OVER), 1)
        while True:
            read = await self._store.read(partial(_full, conversation=conversation, wanted=wanted))
            self.reads["full"] += 1
            window.fill(read)
            if (cut := window.cut(budget, upto)) is not None:
                return cut
            wanted *= 2  # hidden turns, or turns after the question being answered, took the room

    def _evict(self) -> None:
        """Drop the least recently used windows past the cap (the newest too, if it alone is past it)."""
        while self._windows and self._bytes > self._max_bytes:
            _conversation, window = self._windows.popitem(last=False)
            self._bytes -= window.size


# Every reply runs these (in its look-up): built once, so that a reply only binds its values. The
# counters come with the turns, as two more columns of the same statement (one round trip on PostgreSQL,
# read in the same snapshot); read apart only when no turn is found.
_COUNTERS = select(turn_changes.c.inserted, turn_changes.c.changed).where(
    turn_changes.c.conversation == bindparam("conversation")
)
_WITH_COUNTERS = (
    *_COLUMNS,
    _COUNTERS.with_only_columns(turn_changes.c.inserted).scalar_subquery().label("inserted"),
    _COUNTERS.with_only_columns(turn_changes.c.changed).scalar_subquery().label("changed"),
)
_NEWEST = (
    select(*_WITH_COUNTERS)
    .where(turns.c.conversation == bindparam("conversation"))
    .order_by(turns.c.id.desc())
    .limit(bindparam("page"))
)
_OLDER = (
    select(*_COLUMNS)
    .where(turns.c.conversation == bindparam("conversation"), turns.c.id < bindparam("before"))
    .order_by(turns.c.id.desc())
    .limit(bindparam("page"))
)
_SINCE = (
    select(*_WITH_COUNTERS)
    .where(turns.c.conversation == bindparam("conversation"), turns.c.id > bindparam("newest"))
    .order_by(turns.c.id)
)
_SINCE_OR_STREAMING = (
    select(*_WITH_COUNTERS)
    .where(
        turns.c.conversation == bindparam("conversation"),
        or_(turns.c.id > bindparam("newest"), turns.c.id.in_(bindparam("streaming", expanding=True))),
    )
    .order_by(turns.c.id)
)


# The same reads for many conversations at once (PostgreSQL): one row per turn found, each with the
# conversation's place among those asked (`n`) and its counters, read in the statement's one snapshot; a
# conversation without turns still gives one row, its turn's columns null.
_ASKED = (
    func.unnest(
        bindparam("conversations", type_=postgresql.ARRAY(String)),
        bindparam("newest", type_=postgresql.ARRAY(Integer)),
    )
    .table_valued("conversation", "newest", with_ordinality="n")
    .render_derived("asked")
)
_NEWEST_EACH = (
    select(*_COLUMNS)
    .where(turns.c.conversation == _ASKED.c.conversation)
    .order_by(turns.c.id.desc())
    .limit(bindparam("page"))
    .lateral("found")
)
_SINCE_EACH = (
    select(*_COLUMNS)
    .where(
        turns.c.conversation == _ASKED.c.conversation,
        or_(
            turns.c.id > _ASKED.c.newest,
            turns.c.id == any_(bindparam("streaming", type_=postgresql.ARRAY(Integer))),
        ),
    )
    .lateral("found")
)


def _each(found: Any) -> Select[Any]:
    return (
        select(_ASKED.c.n, turn_changes.c.inserted, turn_changes.c.changed, *found.c)
        .select_from(
            _ASKED.outerjoin(turn_changes, turn_changes.c.conversation == _ASKED.c.conversation).outerjoin(
                found, true()
            )
        )
        .order_by(_ASKED.c.n, found.c.id)
    )


_READ_NEWEST_EACH = _each(_NEWEST_EACH)
_READ_SINCE_EACH = _each(_SINCE_EACH)


def read_ahead_many(conn: Connection, asked: Sequence[ReadAhead]) -> list[Ahead]:
    """What each of `asked` reads, as calling it would, in one statement for the conversations whose
    window is not held and one for those whose window is (PostgreSQL)."""
    reads = [_Read(0, 0, []) for _ in asked]
    fresh = [k for k, ask in enumerate(asked) if ask.window is None]
    held = [k for k, ask in enumerate(asked) if ask.window is not None]
    if fresh:
        values = {"conversations": [asked[k].conversation for k in fresh], "newest": [0] * len(fresh)}
        _spread(conn.execute(_READ_NEWEST_EACH, values | {"page": AHEAD_PAGE}), fresh, reads)
        for k in fresh:
            reads[k].complete = len(reads[k].rows) < AHEAD_PAGE
    if held:
        values = {
            "conversations": [asked[k].conversation for k in held],
            "newest": [asked[k].newest for k in held],
            "streaming": sorted({turn for k in held for turn in asked[k].streaming}),
        }
        _spread(conn.execute(_READ_SINCE_EACH, values), held, reads)
    return [Ahead(ask.window, ask.version, read) for ask, read in zip(asked, reads, strict=True)]


def _spread(rows: Any, which: list[int], reads: list[_Read]) -> None:
    """Each row to the read of the conversation it was asked for (`n` counts from 1 in `which`)."""
    for row in rows:
        read = reads[which[row.n - 1]]
        read.inserted, read.changed = row.inserted or 0, row.changed or 0
        if row.id is not None:
            read.rows.append(row)


def _counters(conn: Connection, conversation: str, rows: Sequence[Any]) -> tuple[int, int]:
    """The counters, as read with `rows` (their last two columns), or on their own when none were found."""
    if rows:
        return rows[0].inserted or 0, rows[0].changed or 0
    row = conn.execute(_COUNTERS, {"conversation": conversation}).first()
    return (row.inserted, row.changed) if row else (0, 0)


def _full(conn: Connection, conversation: str, wanted: int) -> _Read:
    """The counters, then turns from the newest back until those memory uses hold `wanted` tokens."""
    rows: list[Any] = []
    tokens = 0
    page = FIRST_PAGE
    got = conn.execute(_NEWEST, {"conversation": conversation, "page": page}).all()
    inserted, changed = _counters(conn, conversation, got)
    while True:
        rows.extend(got)
        tokens += sum(row.tokens for row in got if row.hidden is None and row.outcome != "streaming")
        if len(got) < page:
            return _Read(inserted, changed, rows[::-1], complete=True)
        if tokens >= wanted:
            return _Read(inserted, changed, rows[::-1])
        page *= 2
        got = conn.execute(_OLDER, {"conversation": conversation, "before": got[-1].id, "page": page}).all()


def _newest(conn: Connection, conversation: str, count: int) -> _Read:
    """The counters and the newest `count` turns, oldest first: complete when that is all there are."""
    rows = conn.execute(_NEWEST, {"conversation": conversation, "page": count}).all()
    inserted, changed = _counters(conn, conversation, rows)
    return _Read(inserted, changed, rows[::-1], complete=len(rows) < count)


def _since(conn: Connection, conversation: str, newest: int, streaming: list[int]) -> _Read:
    """The counters, then the turns after `newest` and those among `streaming`, oldest first."""
    values: dict[str, Any] = {"conversation": conversation, "newest": newest}
    if streaming:
        values["streaming"] = streaming
    rows = conn.execute(_SINCE_OR_STREAMING if streaming else _SINCE, values).all()
    inserted, changed = _counters(conn, conversation, rows)
    return _Read(inserted, changed, list(rows))
