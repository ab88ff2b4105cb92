"""Durable memory, settings and the inbox on SQLAlchemy Core: SQLite, or PostgreSQL by DATABASE_URL."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alembic.util import CommandError
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    Select,
    String,
    and_,
    any_,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ResourceClosedError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from bot import migrations
from bot.batches import Batches
from bot.config import DATABASE_POOL_SIZE, SetupError
from bot.database_url import describe_database
from bot.models import Attachment, Author, ConversationKey, Message
from bot.schema import (
    budgets,
    conversation_settings,
    inbox,
    inbox_files,
    instances,
    meta,
    skill_modes,
    summaries,
    turns,
    usage,
)
from bot.sqlite_worker import SQLiteWorker
from bot.turn_locks import TurnLocks

if TYPE_CHECKING:  # SQLAlchemy's asyncio extension is imported only when PostgreSQL is used
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

T = TypeVar("T")

SETTING_FIELDS = ("model", "system_prompt", "autoreply")
FIRST_PAGE = 32  # turns the first query reads while filling a context budget; each later query reads 4x more
LEADER_KEY = 0x7061726C65796C  # the advisory lock the leader holds ("parleyl")


@dataclass(frozen=True, slots=True)
class Turn:
    id: int
    role: str
    author_name: str
    content: str
    tokens: int
    outcome: str | None


# What a reply's context reads of each turn: a Turn, and the question an answer answers.
CONTEXT_COLUMNS = (
    turns.c.id,
    turns.c.role,
    turns.c.author_name,
    turns.c.content,
    turns.c.tokens,
    turns.c.outcome,
    turns.c.answers,
)


def context_turn(row: Any) -> Turn:
    """A row read with CONTEXT_COLUMNS as a reply's context holds it."""
    return Turn(row.id, row.role, row.author_name, row.content, row.tokens, row.outcome)


def context_order(turn_id: int, answers: int | None) -> tuple[int, int]:
    """Where a turn stands in a reply's context: an answer right after its question, whenever written."""
    return (answers if answers is not None else turn_id, turn_id)


@dataclass(frozen=True, slots=True)
class StoredTurn:
    """A turn as history shows it."""

    id: int
    role: str
    author_id: str
    author_name: str
    content: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Question:
    """A user turn as reply controls need it: where it was asked, by whom, and what."""

    id: int
    conversation: str
    author_id: str
    content: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """A platform message as the inbox took it in."""

    turn_id: int | None  # its question, when it had something to remember
    received_at: float
    conversation: str
    reply_to: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class AssistantRecord:
    content: str
    model: str
    outcome: str  # ok, error, cut_off, streaming (until finished), interrupted (cut short by a crash)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    latency_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A streaming reply's text so far, as a batch of checkpoints saves it."""

    turn_id: int
    content: str
    model: str
    tokens: int


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A message Parley accepted and has yet to answer, as stored."""

    id: int
    message: Message
    reply_to: dict[str, Any] | None  # what the adapter needs to answer it, as it gave it
    turn_id: int | None  # its user turn; None for commands and messages with nothing to remember
    received_at: float


@dataclass(frozen=True, slots=True)
class StreamingReply:
    """A reply that was still streaming when its process stopped."""

    turn_id: int
    conversation: str
    content: str
    refs: dict[str, Any] | None
    answers: int | None


class Store:
    """Every transaction is a plain function of a `Connection`, run in one step: on SQLite by a writer
    thread (and, for a file, a reader thread) on a connection of its own, in the order asked; on
    PostgreSQL on a connection of the pool."""

    def __init__(
        self,
        dialect: str,
        *,
        pool: AsyncEngine | None = None,
        pool_size: int = DATABASE_POOL_SIZE,
        lock_engine: AsyncEngine | None = None,
        writer: SQLiteWorker | None = None,
        reader: SQLiteWorker | None = None,
    ) -> None:
        self._dialect = dialect
        self._pool = pool
        # Reads need no transaction: under PostgreSQL's READ COMMITTED each statement reads its own
        # snapshot either way, and without BEGIN and ROLLBACK a read holds its connection for one round
        # trip instead of three.
        self._read_pool = pool.execution_options(isolation_level="AUTOCOMMIT") if pool else None
        # Callers wait here for one of the pool's connections, in arrival order and for as long as it
        # takes: a reply is never failed because the others hold the pool.
        self._connections = asyncio.Semaphore(pool_size)
        self._lock_engine = lock_engine
        self._writer = writer
        self._reader = reader or writer
        # This process among the instances sharing the database: it owns what it accepts and streams.
        self.instance_id = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"
        # On PostgreSQL several instances answer one conversation, so its turns are taken there too.
        self.shared = dialect == "postgresql"
        # Advisory locks live on connections of their own (autocommit, never used for anything else),
        # so a lock holder never waits for a pooled connection that a waiter holds.
        self.turns = TurnLocks(self.lock_connection) if self.shared else None
        # A burst of replies shows at once, and each writes its row at its first render: on PostgreSQL
        # those asked for while one statement is out go into the next.
        self._reply_rows = Batches(self._start_replies, "reply rows") if self.shared else None
        self._leadership: AsyncConnection | None = None
        self._leading = False
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, pool_size: int = DATABASE_POOL_SIZE) -> Store:
        """The store with its tables; SetupError, in one sentence, when the database cannot be used.

        On PostgreSQL, `pool_size` connections carry the transactions; the advisory locks take a few
        more, of their own."""
        parsed = make_url(url)
        store: Store | None = None
        try:
            if parsed.get_backend_name() == "sqlite":
                store = await asyncio.to_thread(cls._sqlite, parsed)
            else:
                from sqlalchemy.ext.asyncio import create_async_engine  # only PostgreSQL needs asyncio's

                store = cls(
                    parsed.get_backend_name(),
                    # Never more than `pool_size` checked out (the semaphore sees to it), so the pool
                    # itself never makes anyone wait, and never times out.
                    pool=create_async_engine(url, pool_size=pool_size, max_overflow=0),
                    pool_size=pool_size,
                    lock_engine=create_async_engine(url, poolclass=NullPool),
                )
            await store.write(_migrate)
            await store.heartbeat()  # registered before it accepts anything, so nobody takes its work
        except (OSError, sqlite3.Error, SQLAlchemyError, CommandError) as error:
            if store is not None:
                await store._disconnect()
            if isinstance(error, CommandError):  # a revision this version's migrations do not have
                raise SetupError(
                    f"the schema of {describe_database(url)} is at a revision this version of Parley does "
                    f"not know ({error}); a newer version migrated it, so run that version"
                ) from None
            raise SetupError(_unusable(parsed, error)) from None
        return store

    @classmethod
    def _sqlite(cls, url: URL) -> Store:
        """One writer thread and, for a file, one reader thread, on the pysqlite driver whatever the URL
        names: the threads are what keeps the event loop free."""
        in_memory = url.database in (None, "", ":memory:")
        if not in_memory:
            Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
        engine = _sqlite_engine(url)
        writer = SQLiteWorker(engine, "parley-sqlite-writer", "BEGIN IMMEDIATE", checkpoints=not in_memory)
        reader = None if in_memory else SQLiteWorker(engine, "parley-sqlite-reader", "BEGIN")
        return cls("sqlite", writer=writer, reader=reader)

    async def close(self) -> None:
        """Leave the instances (what this one left pending is taken over at once), then disconnect;
        closing again does nothing."""
        if self._closed:
            return
        try:
            if self.turns is not None:
                await self.turns.close()
            if self._leadership is not None:
                await self._leadership.close()
            await self.write(
                lambda conn: conn.execute(delete(instances).where(instances.c.id == self.instance_id))
            )
        except (OSError, SQLAlchemyError):
            pass  # unreachable now: its heartbeat stops, and it counts as dead soon
        await self._disconnect()

    async def _disconnect(self) -> None:
        self._closed = True
        for worker in (self._reader, self._writer):  # the same one twice for a database in memory
            if worker is not None:
                await worker.close()
        for engine in (self._pool, self._lock_engine):
            if engine is not None:
                await engine.dispose()

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` as one transaction: committed when it returns, rolled back when it raises.

        Every write takes this one path to the database: on SQLite the writer thread runs the whole
        function at once, in the order asked, so writes never race for SQLite's one write lock."""
        return await self._run(work, self._writer, transaction=True)

    async def write_alone(self, work: Callable[[Connection], T]) -> T:
        """Run `work`, which makes one statement, as its own transaction: PostgreSQL commits a statement
        made outside a transaction by itself, so it takes one round trip instead of three (BEGIN, the
        statement, COMMIT) and holds its connection that much less. On SQLite, a write like any other."""
        return await self._run(work, self._writer, transaction=False)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on a connection that sees every committed write, and change nothing."""
        return await self._run(work, self._reader, transaction=False)

    async def _run(
        self, work: Callable[[Connection], T], worker: SQLiteWorker | None, *, transaction: bool
    ) -> T:
        if self._closed:
            raise ResourceClosedError("the store is closed")
        if worker is not None:
            return await worker.run(work)
        assert self._pool is not None and self._read_pool is not None
        connect = self._pool.begin if transaction else self._read_pool.connect
        async with self._connections, connect() as conn:  # the turn first, then the connection
            return await conn.run_sync(work)

    @staticmethod
    async def revision(url: str) -> str | None:
        """The schema revision the database is at (None before Parley's first start), changing nothing."""
        parsed = make_url(url)
        try:
            if parsed.get_backend_name() == "sqlite":
                return await asyncio.to_thread(_sqlite_revision, parsed)
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(url)
            try:
                async with engine.connect() as conn:
                    return await conn.run_sync(migrations.current)
            finally:
                await engine.dispose()
        except (OSError, sqlite3.Error, SQLAlchemyError) as error:
            raise SetupError(_unusable(parsed, error)) from None

    # The inbox

    async def accept(
        self,
        message: Message,
        reply_to: dict[str, Any] | None,
        content: str,
        tokens: int,
        then: Callable[[Connection], object] | None = None,
    ) -> InboxEntry | None:
        """Store a message the moment it is accepted: its inbox row, its files and (when there is something
        to remember) its user turn, in one transaction (on PostgreSQL, for a message without files and
        nothing to run `then`, in one statement). None when this delivery was stored before.

        `then` runs in the same transaction once the message is written, not for a redelivery: reads its
        caller would otherwise make in a store hop of their own. It must not raise (that would undo the
        message)."""
        now = time.time()
        key = message.key
        turn = {
            "conversation": str(key),
            "role": "user",
            "author_id": message.author.id,
            "author_name": message.author.display_name,
            "content": content,
            "tokens": tokens,
            "created_at": now,
        }
        row = {
            "platform": key.platform,
            "channel": key.channel_id,
            "thread": key.thread_id,
            "message_id": message.id,
            "conversation": str(key),
            "author": _author_json(message.author),
            "text": message.text,
            "is_direct": message.is_direct,
            "reply_to": json.dumps(reply_to) if reply_to is not None else None,
            "server": message.server_id,
            "turn_id": None,
            "state": "pending",
            "received_at": now,
            "author_id": message.author.id,
            "instance": self.instance_id,
        }
        if self._dialect == "postgresql" and not message.attachments and then is None:  # one round trip
            if content:
                values = row | {f"turn_{name}": value for name, value in turn.items()}
                stored = await self.write_alone(lambda conn: conn.execute(_ACCEPT_WITH_TURN, values).first())
                return InboxEntry(stored.id, message, reply_to, stored.turn_id, now) if stored else None
            inbox_id = await self.write_alone(
                lambda conn: conn.execute(_INSERT_INBOX[self._dialect], row).scalar()
            )
            return InboxEntry(inbox_id, message, reply_to, None, now) if inbox_id is not None else None

        def work(conn: Connection) -> InboxEntry:
            turn_id = int(conn.execute(_INSERT_TURN, turn).inserted_primary_key[0]) if content else None
            inbox_id = conn.execute(_INSERT_INBOX[self._dialect], row | {"turn_id": turn_id}).scalar()
            if inbox_id is None:
                raise _Redelivery
            if message.attachments:
                conn.execute(
                    _INSERT_FILES, [_file_values(inbox_id, attachment) for attachment in message.attachments]
                )
            if then is not None:
                then(conn)
            return InboxEntry(inbox_id, message, reply_to, turn_id, now)

        try:
            return await self.write(work)
        except _Redelivery:
            return None

    async def close_inbox(self, inbox_id: int, state: str = "done") -> None:
        await self.write(lambda conn: _close_one(conn, inbox_id, state))

    async def pending(self, platform: str) -> list[InboxEntry]:
        """The platform's accepted messages not yet answered, on any instance, oldest first, with their
        files."""
        query = select(inbox).where(inbox.c.state == "pending", inbox.c.platform == platform)
        return await self.read(
            lambda conn: _with_files(conn, conn.execute(query.order_by(inbox.c.id)).mappings().all())
        )

    # Instances

    async def heartbeat(self) -> None:
        """This instance is alive, by the database's clock (also after another took it for dead)."""
        now = self._now()
        values = {"host": socket.gethostname()[:255], "pid": os.getpid(), "heartbeat_at": now}
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = dialect_insert(instances).values(id=self.instance_id, started_at=time.time(), **values)
        statement = statement.on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now})
        await self.write(lambda conn: conn.execute(statement))

    async def claim_streaming(
        self, platform: str, dead_after: float, conversation: str | None = None
    ) -> list[StreamingReply]:
        """Take over the platform's replies (or one conversation's) that dead instances left streaming,
        to repair them. The partial index on streaming rows finds them without reading every turn."""
        statement = (
            update(turns)
            .where(
                turns.c.outcome == "streaming",
                turns.c.conversation.startswith(f"{platform}:"),
                self.orphaned(turns.c.instance, dead_after),
                turns.c.conversation == conversation if conversation is not None else true(),
            )
            .values(instance=self.instance_id)
            .returning(turns.c.id, turns.c.conversation, turns.c.content, turns.c.reply_refs, turns.c.answers)
        )
        rows = await self.write(lambda conn: conn.execute(statement).all())
        rows = sorted(rows, key=lambda row: row.id)
        return [StreamingReply(r.id, r.conversation, r.content, _json(r.reply_refs), r.answers) for r in rows]

    async def claim_pending(
        self, platform: str, dead_after: float, conversation: str | None = None
    ) -> list[InboxEntry]:
        """Take over the platform's messages (or one conversation's) that dead instances accepted and left
        unanswered, oldest first; claimed in one statement, so two instances sweeping at once never both
        take one. A message whose reply a dead instance left streaming is not taken: repairing that
        reply answers it (or, when nothing of it showed, drops it so it is taken next)."""
        statement = (
            update(inbox)
            .where(
                inbox.c.state == "pending",
                inbox.c.platform == platform,
                self.orphaned(inbox.c.instance, dead_after),
                # A reply of it still streaming is being repaired (which answers it), or will be.
                ~exists().where(turns.c.answers == inbox.c.turn_id, turns.c.outcome == "streaming"),
                inbox.c.conversation == conversation if conversation is not None else true(),
            )
            .values(instance=self.instance_id)
            .returning(inbox.c.id)
        )

        def work(conn: Connection) -> list[InboxEntry]:
            ids = [row.id for row in conn.execute(statement)]
            if not ids:
                return []
            query = select(inbox).where(inbox.c.id.in_(ids)).order_by(inbox.c.id)
            return _with_files(conn, conn.execute(query).mappings().all())

        return await self.write(work)

    def orphaned(self, owner: Any, dead_after: float) -> ColumnElement[bool]:
        """Owned by no live instance. On SQLite one process serves the platforms, so every other
        instance is one that stopped; on PostgreSQL, one silent for more than `dead_after` seconds."""
        if not self.shared:
            return or_(owner.is_(None), owner != self.instance_id)
        live = select(instances.c.id).where(instances.c.heartbeat_at >= self._now() - dead_after)
        return or_(owner.is_(None), owner.not_in(live))

    def _now(self) -> ColumnElement[float]:
        """The database's clock in epoch seconds: every instance reads the same one."""
        if self._dialect == "postgresql":
            return cast(func.extract("epoch", func.clock_timestamp()), Float)
        return (func.julianday("now") - 2440587.5) * 86400.0

    async def prune(self, keep_seconds: float) -> int:
        """Forget answered inbox rows older than `keep_seconds`, and instances long dead; how many rows."""

        def work(conn: Connection) -> int:
            answered = conn.execute(
                delete(inbox).where(inbox.c.state != "pending", inbox.c.done_at < time.time() - keep_seconds)
            )
            gone = conn.execute(
                delete(instances).where(instances.c.heartbeat_at < self._now() - keep_seconds)
            )
            return (answered.rowcount or 0) + (gone.rowcount or 0)

        return await self.write(work)

    async def lock_connection(self) -> AsyncConnection:
        """A connection of its own for session advisory locks held for long (PostgreSQL): they are
        released when it closes, or when this instance dies."""
        return await _autocommit(self._lock_engine)

    async def lead(self) -> bool:
        """Whether this instance is the leader: on PostgreSQL the holder of an advisory lock, on its own
        connection, so it is released the moment the instance dies; on SQLite the only instance."""
        if not self.shared:
            return True
        try:
            if self._leadership is None:
                self._leadership = await _autocommit(self._lock_engine)
            if self._leading:
                await self._leadership.execute(text("SELECT 1"))  # still connected, so still holding it
            else:
                query = text("SELECT pg_try_advisory_lock(:key)")
                self._leading = bool((await self._leadership.execute(query, {"key": LEADER_KEY})).scalar())
        except (OSError, SQLAlchemyError):
            self._leading = False
            if self._leadership is not None:
                with contextlib.suppress(OSError, SQLAlchemyError):
                    await self._leadership.close()
            self._leadership = None
        return self._leading

    # Turns

    async def recall(
        self, conversation: str, token_budget: int, upto: int | None = None
    ) -> tuple[list[Turn], bool]:
        """The context of a reply: the newest turns that fit the budget, oldest first, and whether older
        ones were left out.

        With `upto` (the user turn being answered), the conversation as it stood at that question: turns up
        to it, and the finished answers to earlier questions. Replies still streaming are never included.
        """
        return await self.read(lambda conn: _recent(conn, conversation, token_budget, upto))

    async def start_reply(
        self,
        conversation: str,
        answers: int | None,
        author_id: str,
        record: AssistantRecord,
        tokens: int,
        refs: dict[str, Any] | None = None,
    ) -> int:
        """The assistant turn of a reply now showing: written at its first render, with where it shows."""
        values = {
            **_assistant_values(conversation, author_id, answers, record, tokens),
            "reply_refs": json.dumps(refs) if refs is not None else None,
            "instance": self.instance_id,
        }
        if self._reply_rows is not None:
            return await self._reply_rows(values)
        return await self.write_alone(
            lambda conn: int(conn.execute(_INSERT_TURN, values).inserted_primary_key[0])
        )

    async def _start_replies(self, rows: list[dict[str, object]]) -> list[int]:
        """PostgreSQL: the rows of the replies that showed while the last batch was out, in one statement;
        their ids in the order asked."""
        columns = tuple(rows[0])  # (each row is `start_reply`'s values: the same columns)
        bound = {f"rows_{name}": [row[name] for row in rows] for name in columns}
        return await self.write_alone(
            lambda conn: list(conn.execute(_reply_rows_statement(columns), bound).scalars())
        )

    async def save_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> None:
        """The text so far of streaming replies, all in one transaction. A reply finished meanwhile keeps
        its final record: only rows still streaming are written."""
        rows = [
            {"turn_id": c.turn_id, "text": c.content, "text_model": c.model, "text_tokens": c.tokens}
            for c in checkpoints
        ]
        if rows:
            await self.write(lambda conn: conn.execute(_CHECKPOINT, rows))

    async def finish_reply(
        self,
        inbox_id: int,
        conversation: str,
        turn_id: int | None,
        answers: int | None,
        author_id: str,
        record: AssistantRecord,
        tokens: int,
        usage_rows: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Save a reply's final record, close its message in the inbox and record what it spent
        (`usage_rows`), in one transaction: after a crash a message is either answered or still
        pending, never both, and its usage is counted once with its answer."""
        if turn_id is None:
            values = _assistant_values(conversation, author_id, answers, record, tokens)
        else:
            values = {"tokens": tokens, **_record_values(record)}
        if self._dialect == "postgresql":  # one statement: one round trip, where a transaction takes six
            statement = _finish_statement(turn_id is None)
            bound = {f"reply_{name}": value for name, value in values.items()}
            bound |= {"turn": turn_id, "inbox": inbox_id, "closed_at": time.time()}
            bound |= {
                f"usage_{name}": [row.get(name, default) for row in usage_rows]
                for name, default in _USAGE_COLUMNS.items()
            }
            await self.write_alone(lambda conn: conn.execute(statement, bound))
            return
        if turn_id is not None:
            values["turn"] = turn_id

        def work(conn: Connection) -> None:
            conn.execute(_INSERT_TURN if turn_id is None else _UPDATE_TURN, values)
            _close_one(conn, inbox_id, "done")
            if usage_rows:
                conn.execute(_INSERT_USAGE, list(usage_rows))

        await self.write(work)

    async def save_refs(self, turn_id: int, refs: dict[str, Any]) -> None:
        values = {"turn": turn_id, "reply_refs": json.dumps(refs)}
        await self.write_alone(lambda conn: conn.execute(_UPDATE_TURN, values))

    async def streaming(self, platform: str) -> list[StreamingReply]:
        """The platform's replies still streaming, on any instance (read through the partial index)."""
        query = select(
            turns.c.id, turns.c.conversation, turns.c.content, turns.c.reply_refs, turns.c.answers
        ).where(turns.c.outcome == "streaming", turns.c.conversation.startswith(f"{platform}:"))
        rows = await self.read(lambda conn: conn.execute(query.order_by(turns.c.id)).all())
        return [StreamingReply(r.id, r.conversation, r.content, _json(r.reply_refs), r.answers) for r in rows]

    async def interrupted(self, reply: StreamingReply) -> None:
        """Record a reply a crash cut short; its question counts as answered, so it is not asked again."""

        def work(conn: Connection) -> None:
            conn.execute(update(turns).where(turns.c.id == reply.turn_id).values(outcome="interrupted"))
            if reply.answers is not None:
                _close(conn, and_(inbox.c.turn_id == reply.answers, inbox.c.state == "pending"), "done")

        await self.write(work)

    async def drop_turn(self, turn_id: int) -> None:
        await self.write(lambda conn: conn.execute(delete(turns).where(turns.c.id == turn_id)))

    async def history(
        self, conversation: str, limit: int, before: int | None = None, after: int | None = None
    ) -> list[StoredTurn]:
        """Up to `limit` stored turns, oldest first: the newest, or those before/after a turn id."""
        query = select(
            turns.c.id,
            turns.c.role,
            turns.c.author_id,
            turns.c.author_name,
            turns.c.content,
            turns.c.created_at,
        ).where(turns.c.conversation == conversation)
        if before is not None:
            query = query.where(turns.c.id < before)
        if after is not None:
            query = query.where(turns.c.id > after).order_by(turns.c.id).limit(limit)
        else:
            query = query.order_by(turns.c.id.desc()).limit(limit)
        rows = await self.read(lambda conn: conn.execute(query).all())
        stored = [StoredTurn(r.id, r.role, r.author_id, r.author_name, r.content, r.created_at) for r in rows]
        return stored if after is not None else stored[::-1]

    async def count_turns(self, conversation: str) -> int:
        query = select(func.count()).select_from(turns).where(turns.c.conversation == conversation)
        return int(await self.read(lambda conn: conn.execute(query).scalar_one()))

    async def forget(self, conversation: str) -> int:
        statement = delete(turns).where(turns.c.conversation == conversation)
        return await self.write(lambda conn: conn.execute(statement).rowcount or 0)

    # Reply controls

    async def question(self, turn_id: int) -> Question | None:
        """A user turn by id, while memory still uses it."""
        query = select(turns.c.id, turns.c.conversation, turns.c.author_id, turns.c.content).where(
            turns.c.id == turn_id, turns.c.role == "user", turns.c.hidden.is_(None)
        )
        row = await self.read(lambda conn: conn.execute(query).first())
        return Question(row.id, row.conversation, row.author_id, row.content) if row else None

    async def last_question(self, conversation: str) -> Question | None:
        """The newest question of a conversation that memory still uses."""
        query = (
            select(turns.c.id, turns.c.conversation, turns.c.author_id, turns.c.content)
            .where(turns.c.conversation == conversation, turns.c.role == "user", turns.c.hidden.is_(None))
            .order_by(turns.c.id.desc())
            .limit(1)
        )
        row = await self.read(lambda conn: conn.execute(query).first())
        return Question(row.id, row.conversation, row.author_id, row.content) if row else None

    async def keep_newest_answer(self, question_id: int) -> None:
        """After a regeneration: memory uses the newest answer to a question that says something; the
        earlier ones stay stored as its alternatives."""
        answers = and_(turns.c.answers == question_id, turns.c.role == "assistant")

        def work(conn: Connection) -> None:
            newest = conn.execute(
                select(func.max(turns.c.id)).where(answers, turns.c.content != "", turns.c.hidden.is_(None))
            ).scalar()
            if newest is not None:
                conn.execute(
                    update(turns)
                    .where(answers, turns.c.id != newest, turns.c.hidden.is_(None))
                    .values(hidden="replaced")
                )

        await self.write(work)

    async def delivered(self, platform: str, channel: str, message_id: str) -> Delivery | None:
        """How a platform message was taken in (its inbox row), if it was."""
        query = select(inbox.c.turn_id, inbox.c.received_at, inbox.c.conversation, inbox.c.reply_to).where(
            inbox.c.platform == platform, inbox.c.channel == channel, inbox.c.message_id == message_id
        )
        row = await self.read(lambda conn: conn.execute(query).first())
        return Delivery(row.turn_id, row.received_at, row.conversation, _json(row.reply_to)) if row else None

    async def answer_refs(self, question_id: int) -> dict[str, Any] | None:
        """Where the answer memory uses for a question shows on its platform."""
        query = (
            select(turns.c.reply_refs)
            .where(turns.c.answers == question_id, turns.c.role == "assistant", turns.c.hidden.is_(None))
            .order_by(turns.c.id.desc())
            .limit(1)
        )
        return _json(await self.read(lambda conn: conn.execute(query).scalar()))

    async def edit_question(self, turn_id: int, content: str, tokens: int) -> None:
        """A question as its author edited it."""
        statement = update(turns).where(turns.c.id == turn_id).values(content=content, tokens=tokens)
        await self.write(lambda conn: conn.execute(statement))

    async def hide_exchange(self, question_id: int, why: str) -> None:
        """Take a question and its answers out of memory (they stay stored): "deleted", "forgotten"."""
        statement = (
            update(turns)
            .where(or_(turns.c.id == question_id, turns.c.answers == question_id), turns.c.hidden.is_(None))
            .values(hidden=why)
        )
        await self.write(lambda conn: conn.execute(statement))

    async def memory_counts(self, conversation: str) -> tuple[int, int, int]:
        """(turns stored, turns memory leaves out, questions with alternative answers) of a conversation."""
        here = turns.c.conversation == conversation

        def work(conn: Connection) -> tuple[int, int, int]:
            stored = conn.execute(select(func.count()).where(here)).scalar_one()
            hidden = conn.execute(select(func.count()).where(here, turns.c.hidden.is_not(None))).scalar_one()
            alternatives = conn.execute(
                select(func.count(func.distinct(turns.c.answers))).where(here, turns.c.hidden == "replaced")
            ).scalar_one()
            return int(stored), int(hidden), int(alternatives)

        return await self.read(work)

    async def answer_count(self, question_id: int) -> int:
        """How many answers a question has, alternatives included."""
        query = select(func.count()).where(turns.c.answers == question_id, turns.c.role == "assistant")
        return int(await self.read(lambda conn: conn.execute(query).scalar_one()))

    # Running summaries

    async def summary(self, conversation: str) -> tuple[str, int] | None:
        """A conversation's running summary and the last turn id it covers."""
        return await self.read(lambda conn: summary_of(conn, conversation))

    async def set_summary(self, conversation: str, content: str, upto: int, model: str) -> None:
        values = {"content": content, "upto": upto, "model": model, "updated_at": time.time()}
        await self._upsert(summaries, {"conversation": conversation}, values)

    async def forget_summary(self, conversation: str) -> None:
        statement = delete(summaries).where(summaries.c.conversation == conversation)
        await self.write(lambda conn: conn.execute(statement))

    async def older_turns(self, conversation: str, after: int, before: int, limit: int) -> list[Turn]:
        """Finished turns memory uses with ids between `after` and `before` (exclusive), oldest first."""
        query = (
            select(*CONTEXT_COLUMNS)
            .where(
                turns.c.conversation == conversation,
                turns.c.id > after,
                turns.c.id < before,
                turns.c.hidden.is_(None),
                or_(turns.c.outcome.is_(None), turns.c.outcome != "streaming"),
            )
            .order_by(turns.c.id)
            .limit(limit)
        )
        rows = await self.read(lambda conn: conn.execute(query).all())
        return [context_turn(row) for row in rows]

    # Settings

    async def set_setting(self, conversation: str, name: str, value: object, updated_by: str) -> None:
        if name not in SETTING_FIELDS:
            raise ValueError(f"unknown setting {name}")
        values = {name: value, "updated_by": updated_by, "updated_at": time.time()}
        await self._upsert(conversation_settings, {"conversation": conversation}, values)

    async def set_skill_mode(self, conversation: str, skill: str, mode: str, updated_by: str) -> None:
        values = {"mode": mode, "updated_by": updated_by, "updated_at": time.time()}
        await self._upsert(skill_modes, {"conversation": conversation, "skill": skill}, values)

    # Small durable values

    async def get_meta(self, name: str) -> str | None:
        query = select(meta.c.value).where(meta.c.name == name)
        return await self.read(lambda conn: conn.execute(query).scalar())

    async def set_meta(self, name: str, value: str) -> None:
        await self._upsert(meta, {"name": name}, {"value": value, "updated_at": time.time()})

    # Usage and budgets

    async def record_usage(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            await self.write(lambda conn: conn.execute(_INSERT_USAGE, list(rows)))

    async def spent(self, column: str, target: str, since: float) -> tuple[float, int]:
        """USD and tokens the models used for `target` (a person, channel or server) since a moment."""
        cost, tokens = await self.read(lambda conn: conn.execute(spent_query(column, target, since)).one())
        return float(cost), int(tokens)

    async def usage_report(
        self, kind: str, by: str, since: float, where: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Usage since a moment, summed by a column (`name`, `person`, `channel`), biggest cost first."""
        group = usage.c[by]
        query = select(
            group.label("key"),
            func.max(usage.c.person_name).label("person_name"),
            func.sum(usage.c.calls).label("calls"),
            func.sum(usage.c.prompt_tokens).label("prompt_tokens"),
            func.sum(usage.c.completion_tokens).label("completion_tokens"),
            func.sum(usage.c.reasoning_tokens).label("reasoning_tokens"),
            func.sum(usage.c.cached_tokens).label("cached_tokens"),
            func.sum(usage.c.cost).label("cost"),
            func.count(func.distinct(usage.c.inbox_id)).label("replies"),
        ).where(usage.c.kind == kind, usage.c.created_at >= since)
        for column, value in (where or {}).items():
            query = query.where(usage.c[column] == value)
        query = query.group_by(group).order_by(
            func.coalesce(func.sum(usage.c.cost), 0.0).desc(),
            func.sum(usage.c.prompt_tokens + usage.c.completion_tokens).desc(),
            group,
        )
        rows = await self.read(lambda conn: conn.execute(query).mappings().all())
        return [dict(row) for row in rows]

    async def budget_overrides(self, targets: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """Budgets set with /budget for the given (scope, target) pairs."""
        return await self.read(lambda conn: budget_overrides_of(conn, targets)) if targets else []

    async def set_budget(
        self, scope: str, target: str, period: str, unit: str, amount: float | None, updated_by: str
    ) -> None:
        key = {"scope": scope, "target": target, "period": period, "unit": unit}
        await self._upsert(
            budgets, key, {"amount": amount, "updated_by": updated_by, "updated_at": time.time()}
        )

    async def clear_budget(self, scope: str, target: str, period: str, unit: str) -> None:
        """Back to the `[budgets]` default."""
        statement = delete(budgets).where(
            budgets.c.scope == scope,
            budgets.c.target == target,
            budgets.c.period == period,
            budgets.c.unit == unit,
        )
        await self.write(lambda conn: conn.execute(statement))

    # For operators

    async def ping(self) -> None:
        """Raises when the database cannot be reached."""
        await self.read(lambda conn: conn.execute(text("SELECT 1")))

    async def pending_count(self) -> int:
        query = select(func.count()).select_from(inbox).where(inbox.c.state == "pending")
        return int(await self.read(lambda conn: conn.execute(query).scalar_one()))

    async def _upsert(self, table: Any, key: dict[str, Any], values: dict[str, Any]) -> None:
        """INSERT … ON CONFLICT DO UPDATE: two writers racing on one key both succeed, the last one wins."""
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        statement = dialect_insert(table).values(**key, **values)
        statement = statement.on_conflict_do_update(index_elements=list(key), set_=values)
        await self.write(lambda conn: conn.execute(statement))


# The reply path's statements, built once: a call passes only its values, and SQLAlchemy finds the
# compiled statement by the object's cache key, worked out once instead of for every new statement
# (a fifth of the writer's time went to building statements and their keys).
_INSERT_TURN = insert(turns)
_UPDATE_TURN = update(turns).where(turns.c.id == bindparam("turn"))  # SET: the values passed
# A delivery seen before inserts nothing and raises nothing (on PostgreSQL an IntegrityError would
# abort the transaction); `accept` rolls its turn back.
_INSERT_INBOX = {
    name: dialect.insert(inbox)
    .on_conflict_do_nothing(index_elements=["platform", "channel", "message_id"])
    .returning(inbox.c.id)
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
}
# On PostgreSQL, a message with no files is accepted in one statement: the inbox row takes its turn's id
# from the turns' sequence, and the turn is inserted only if the row was (a redelivery inserts neither).
_ACCEPTED = (
    postgresql.insert(inbox)
    .values(
        {
            c.name: bindparam(c.name, type_=c.type)
            for c in inbox.c
            if c.name not in ("id", "turn_id", "done_at")
        }
        | {"turn_id": func.nextval(func.pg_get_serial_sequence("turns", "id"))}
    )
    .on_conflict_do_nothing(index_elements=["platform", "channel", "message_id"])
    .returning(inbox.c.id, inbox.c.turn_id)
    .cte("accepted")
)
_TURN_COLUMNS = ("conversation", "role", "author_id", "author_name", "content", "tokens", "created_at")
_ACCEPT_WITH_TURN = select(_ACCEPTED.c.id, _ACCEPTED.c.turn_id).add_cte(
    insert(turns)
    .from_select(
        ["id", *_TURN_COLUMNS],
        select(
            _ACCEPTED.c.turn_id,
            *(bindparam(f"turn_{name}", type_=turns.c[name].type) for name in _TURN_COLUMNS),
        ),
    )
    .cte("remembered")
)
_CLOSE_ONE = (
    update(inbox)
    .where(inbox.c.id == bindparam("inbox"))
    .values(state=bindparam("closed_as"), done_at=bindparam("closed_at"))
)
_FILES_OF_ONE = delete(inbox_files).where(inbox_files.c.inbox_id == bindparam("inbox"))
_INSERT_FILES = insert(inbox_files)
_INSERT_USAGE = insert(usage)


# The usage table's columns a row gives, with what a row that leaves one out stores.
_USAGE_COLUMNS = {
    column.name: column.default.arg if column.default is not None else None
    for column in usage.c
    if column.name != "id"
}


@functools.cache
def _finish_statement(insert_turn: bool) -> Any:
    """A reply's final record as one statement (PostgreSQL): its turn written, its message closed and its
    files dropped, each in a WITH, and its usage rows inserted from one array per column (`unnest`), so
    that the statement is the same whatever the number of rows and SQLAlchemy compiles it once: a
    multi-row VALUES is never cached, and compiling this one cost the loop about 1.2 ms a reply. Bound by
    the names `finish_reply` gives the values: `reply_{column}` for the turn's (`turn`, its id), `inbox`,
    `closed_at` and `usage_{column}`; none is a column's name, which SQLAlchemy would add to a SET."""
    columns = ["tokens", *_record_values(AssistantRecord("", "", ""))]
    if insert_turn:
        columns += ["conversation", "role", "author_id", "author_name", "created_at", "answers"]
    written = (_INSERT_TURN if insert_turn else _UPDATE_TURN).values(
        {name: bindparam(f"reply_{name}", type_=turns.c[name].type) for name in columns}
    )
    closed = (
        update(inbox)
        .where(inbox.c.id == bindparam("inbox"))
        .values(state="done", done_at=bindparam("closed_at"))
    )
    dropped = delete(inbox_files).where(inbox_files.c.inbox_id == bindparam("inbox"))
    rows = select(
        *(
            func.unnest(bindparam(f"usage_{name}", type_=postgresql.ARRAY(usage.c[name].type)))
            for name in _USAGE_COLUMNS
        )
    )
    return (
        insert(usage)
        .from_select(list(_USAGE_COLUMNS), rows)
        .add_cte(written.cte("reply"), closed.cte("closed"), dropped.cte("files"))
    )


@functools.cache
def _reply_rows_statement(columns: tuple[str, ...]) -> Any:
    """Replies' rows from one array per column (PostgreSQL), each given its id from the turns' sequence
    first, so that the ids come back in the order the rows were asked for."""
    asked = (
        func.unnest(
            *(bindparam(f"rows_{name}", type_=postgresql.ARRAY(turns.c[name].type)) for name in columns)
        )
        .table_valued(*columns, with_ordinality="n")
        .render_derived("asked")
    )
    numbered = select(
        func.nextval(func.pg_get_serial_sequence("turns", "id")).label("id"),
        asked.c.n,
        *(asked.c[name] for name in columns),
    ).cte("numbered")
    written = insert(turns).from_select(
        ["id", *columns], select(numbered.c.id, *(numbered.c[name] for name in columns))
    )
    return select(numbered.c.id).add_cte(written.cte("written")).order_by(numbered.c.n)


# A batch of checkpoints: one statement run once per reply, only on rows still streaming.
_CHECKPOINT = (
    update(turns)
    .where(turns.c.id == bindparam("turn_id"), turns.c.outcome == "streaming")
    .values(content=bindparam("text"), model=bindparam("text_model"), tokens=bindparam("text_tokens"))
)


# Reads a message needs, as plain functions of a connection, so that one store hop can run several.
# Their statements are built once too (a list of keys is an expanding parameter): a reply's look-up ran
# them per call, and building each statement and its cache key cost more than running it.
_SETTINGS_OF = select(conversation_settings).where(
    conversation_settings.c.conversation.in_(bindparam("conversations", expanding=True))
)
_SKILL_MODES_OF = select(skill_modes.c.conversation, skill_modes.c.skill, skill_modes.c.mode).where(
    skill_modes.c.conversation.in_(bindparam("conversations", expanding=True))
)
# By target alone; the (scope, target) pairs asked for are picked out of what it finds.
_BUDGETS_OF = select(budgets).where(budgets.c.target.in_(bindparam("targets", expanding=True)))
_SUMMARY_OF = select(summaries.c.content, summaries.c.upto).where(
    summaries.c.conversation == bindparam("conversation")
)


# The same reads for the look-ups of many replies at once (PostgreSQL, bot/lookups.py): an array
# parameter, where an expanding IN would make a new statement for every number of keys.
_EVERY = postgresql.ARRAY(String)
_SETTINGS_OF_EVERY = select(conversation_settings).where(
    conversation_settings.c.conversation == any_(bindparam("conversations", type_=_EVERY))
)
_SKILL_MODES_OF_EVERY = select(skill_modes.c.conversation, skill_modes.c.skill, skill_modes.c.mode).where(
    skill_modes.c.conversation == any_(bindparam("conversations", type_=_EVERY))
)
_BUDGETS_OF_EVERY = select(budgets).where(budgets.c.target == any_(bindparam("targets", type_=_EVERY)))
_SUMMARIES_OF_EVERY = select(summaries.c.conversation, summaries.c.content, summaries.c.upto).where(
    summaries.c.conversation == any_(bindparam("conversations", type_=_EVERY))
)


def settings_by_conversation(conn: Connection, conversations: Sequence[str]) -> dict[str, dict[str, object]]:
    """PostgreSQL: the stored settings row of each of `conversations` that has one."""
    rows = conn.execute(_SETTINGS_OF_EVERY, {"conversations": list(conversations)}).mappings()
    return {row["conversation"]: dict(row) for row in rows}


def skill_modes_by_conversation(conn: Connection, conversations: Sequence[str]) -> dict[str, dict[str, str]]:
    """PostgreSQL: the skill modes set for each of `conversations` that has any, {skill: mode} each."""
    by_key: dict[str, dict[str, str]] = {}
    for row in conn.execute(_SKILL_MODES_OF_EVERY, {"conversations": list(conversations)}):
        by_key.setdefault(row.conversation, {})[row.skill] = row.mode
    return by_key


def budgets_of_targets(conn: Connection, targets: Sequence[str]) -> list[dict[str, Any]]:
    """PostgreSQL: every budget set with /budget for any of `targets`, whatever its scope."""
    return [dict(row) for row in conn.execute(_BUDGETS_OF_EVERY, {"targets": list(targets)}).mappings()]


def summaries_by_conversation(conn: Connection, conversations: Sequence[str]) -> dict[str, tuple[str, int]]:
    """PostgreSQL: the running summary and its last turn id of each of `conversations` that has one."""
    rows = conn.execute(_SUMMARIES_OF_EVERY, {"conversations": list(conversations)})
    return {row.conversation: (row.content, row.upto) for row in rows}


def settings_of(conn: Connection, conversations: Sequence[str]) -> list[dict[str, object]]:
    """Stored settings rows for the given conversations, in the order asked (missing ones omitted)."""
    rows = conn.execute(_SETTINGS_OF, {"conversations": list(conversations)}).mappings()
    by_key = {row["conversation"]: dict(row) for row in rows}
    return [by_key[c] for c in conversations if c in by_key]


def skill_modes_of(conn: Connection, conversations: Sequence[str]) -> list[dict[str, str]]:
    """Skill modes set for the given conversations, in the order asked: {skill: mode} each."""
    by_key: dict[str, dict[str, str]] = {}
    for row in conn.execute(_SKILL_MODES_OF, {"conversations": list(conversations)}):
        by_key.setdefault(row.conversation, {})[row.skill] = row.mode
    return [by_key.get(c, {}) for c in conversations]


def budget_overrides_of(conn: Connection, targets: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Budgets set with /budget for the given (scope, target) pairs."""
    if not targets:
        return []
    wanted = set(targets)
    rows = conn.execute(_BUDGETS_OF, {"targets": sorted({target for _, target in targets})}).mappings()
    return [dict(row) for row in rows if (row["scope"], row["target"]) in wanted]


def summary_of(conn: Connection, conversation: str) -> tuple[str, int] | None:
    """A conversation's running summary and the last turn id it covers."""
    row = conn.execute(_SUMMARY_OF, {"conversation": conversation}).first()
    return (row.content, row.upto) if row else None


def _migrate(conn: Connection) -> None:
    migrations.upgrade(conn)
    # A schema at head needs no write, but answering does: find out now if none is allowed.
    conn.execute(update(meta).where(meta.c.name == "").values(value=meta.c.value))


def _sqlite_engine(url: URL) -> Engine:
    """Each worker thread holds its one connection for the store's life (NullPool: closing it closes the
    file, in that thread); the driver's own transaction handling is off, since the workers begin each."""
    engine = create_engine(url.set(drivername="sqlite"), poolclass=NullPool)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_revision(url: URL) -> str | None:
    if url.database not in (None, "", ":memory:") and not Path(str(url.database)).is_file():
        return None  # an SQLite file not made yet
    engine = create_engine(url.set(drivername="sqlite"), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return migrations.current(conn)
    finally:
        engine.dispose()


def spent_query(column: str, target: str, since: float) -> Select[tuple[float, int]]:
    """The USD and tokens `target` spent since a moment (see `Store.spent`)."""
    return select(
        func.coalesce(func.sum(usage.c.cost), 0.0),
        func.coalesce(func.sum(usage.c.prompt_tokens + usage.c.completion_tokens), 0),
    ).where(usage.c[column] == target, usage.c.kind == "model", usage.c.created_at >= since)


class _Redelivery(Exception):
    """Raised inside `accept`'s transaction to roll it back: the delivery is stored already."""


async def _autocommit(engine: AsyncEngine | None) -> AsyncConnection:
    """A connection that holds session locks, never a transaction (so it pins no snapshot). It is opened
    outside the pool: a lock holder never waits behind the transactions, nor they behind the locks."""
    assert engine is not None, "advisory locks are PostgreSQL's"
    conn = await engine.connect()
    await conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn


def _with_files(conn: Connection, rows: Sequence[Any]) -> list[InboxEntry]:
    entries = []
    for row in rows:
        files = conn.execute(
            select(inbox_files).where(inbox_files.c.inbox_id == row["id"]).order_by(inbox_files.c.id)
        ).mappings()
        entries.append(_entry(row, [_attachment(f) for f in files.all()]))
    return entries


def _close_one(conn: Connection, inbox_id: int, state: str) -> None:
    """Close one inbox row (see `_close`)."""
    conn.execute(_CLOSE_ONE, {"inbox": inbox_id, "closed_as": state, "closed_at": time.time()})
    conn.execute(_FILES_OF_ONE, {"inbox": inbox_id})


def _close(conn: Connection, which: Any, state: str) -> None:
    """Close inbox rows; their files were kept only to answer them."""
    ids = [row.id for row in conn.execute(select(inbox.c.id).where(which))]
    if ids:
        conn.execute(update(inbox).where(inbox.c.id.in_(ids)).values(state=state, done_at=time.time()))
        conn.execute(delete(inbox_files).where(inbox_files.c.inbox_id.in_(ids)))


def _recent(
    conn: Connection, conversation: str, token_budget: int, upto: int | None
) -> tuple[list[Turn], bool]:
    """Reads in pages from the newest end, so the cost depends on what fits, not on how much is stored."""
    chosen: list[tuple[tuple[int, int], Turn]] = []
    used = 0
    before: int | None = None
    page = FIRST_PAGE
    condition = and_(
        turns.c.conversation == conversation,
        or_(turns.c.outcome.is_(None), turns.c.outcome != "streaming"),
        turns.c.hidden.is_(None),
    )
    if upto is not None:
        condition = and_(condition, or_(turns.c.id <= upto, turns.c.answers < upto))
    trimmed = False
    while True:
        query = select(*CONTEXT_COLUMNS).where(condition).order_by(turns.c.id.desc()).limit(page)
        if before is not None:
            query = query.where(turns.c.id < before)
        rows = conn.execute(query).all()
        for row in rows:
            if used + row.tokens > token_budget:
                trimmed = True
                break
            used += row.tokens
            chosen.append((context_order(row.id, row.answers), context_turn(row)))
        if trimmed or len(rows) < page:
            break
        before = rows[-1].id
        page *= 4
    chosen.sort(key=lambda pair: pair[0])
    return [turn for _, turn in chosen], trimmed


def _unusable(url: URL, error: Exception) -> str:
    """Why the database cannot be used, naming the file or folder to fix where that is the cause."""
    reason = getattr(error, "orig", None) or error
    detail = getattr(reason, "strerror", None) or str(reason).splitlines()[0] or type(reason).__name__
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return f"could not open the database {url.render_as_string(hide_password=True)} ({detail})"
    path = Path(url.database)
    folder = next(p for p in path.parents if p.exists())
    if path.exists() and not os.access(path, os.W_OK):
        return f"the database file {path} is read-only; Parley must be able to write to it"
    if not folder.is_dir():
        return f"{folder} is a file, so Parley cannot keep its database {path} there"
    if not os.access(folder, os.W_OK):
        return (
            f"Parley cannot write its database in {folder} ({detail}); "
            "set PARLEY_HOME or DATABASE_URL to a folder it can write to"
        )
    return f"could not open the database file {path} ({detail})"


def _assistant_values(
    conversation: str, author_id: str, answers: int | None, record: AssistantRecord, tokens: int
) -> dict[str, object]:
    """A reply's assistant turn, whether written at its first render or only at its end."""
    return {
        "conversation": conversation,
        "role": "assistant",
        "author_id": author_id,
        "author_name": "",
        "created_at": time.time(),
        "tokens": tokens,
        "answers": answers,
        **_record_values(record),
    }


def _record_values(record: AssistantRecord) -> dict[str, object]:
    return {
        "content": record.content,
        "model": record.model,
        "outcome": record.outcome,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost": record.cost,
        "latency_ms": record.latency_ms,
    }


def _author_json(author: Author) -> str:
    return json.dumps(
        {
            "id": author.id,
            "name": author.display_name,
            "manager": author.is_channel_manager,
            "roles": list(author.role_ids),
        }
    )


def _file_values(inbox_id: int, attachment: Attachment) -> dict[str, Any]:
    return {
        "inbox_id": inbox_id,
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "data": attachment.data,
        "unavailable_reason": attachment.unavailable_reason,
    }


def _attachment(row: Any) -> Attachment:
    return Attachment(
        row["filename"], row["content_type"], row["size"], row["data"], row["unavailable_reason"]
    )


def _entry(row: Any, attachments: list[Attachment]) -> InboxEntry:
    author = json.loads(row["author"])
    message = Message(
        key=ConversationKey(row["platform"], row["channel"], row["thread"]),
        author=Author(author["id"], author["name"], author["manager"], tuple(author["roles"])),
        text=row["text"],
        id=row["message_id"],
        attachments=tuple(attachments),
        is_direct=bool(row["is_direct"]),
        created_at=row["received_at"],
        server_id=row["server"],
    )
    return InboxEntry(row["id"], message, _json(row["reply_to"]), row["turn_id"], row["received_at"])


def _json(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers proceed while a reply is being written; the busy timeout rides out short locks.
    # synchronous=NORMAL is WAL's recommended pairing: no corruption on a crash, and no fsync per commit
    # (a power cut may lose the last commits; a process crash loses nothing).
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]  # the workers BEGIN themselves
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
