"""Durable memory and settings on SQLAlchemy Core: SQLite by default, PostgreSQL when DATABASE_URL says so."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.config import SetupError

metadata = MetaData()

turns = Table(
    "turns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation", String(255), nullable=False),
    Column("role", String(16), nullable=False),
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
    Index("ix_turns_conversation_id", "conversation", "id"),
)

conversation_settings = Table(
    "conversation_settings",
    metadata,
    Column("conversation", String(255), primary_key=True),
    Column("model", String(255)),
    Column("system_prompt", Text),
    Column("search_mode", String(8)),
    Column("autoreply", Boolean),
    Column("updated_by", String(255)),
    Column("updated_at", Float),
)

event_claims = Table(
    "event_claims",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("created_at", Float, nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("value", Text, nullable=False),
)

SETTING_FIELDS = ("model", "system_prompt", "search_mode", "autoreply")
FIRST_PAGE = 32  # turns the first query reads while filling a context budget; each later query reads 4x more


@dataclass(frozen=True, slots=True)
class Turn:
    id: int
    role: str
    author_name: str
    content: str
    tokens: int
    outcome: str | None


@dataclass(frozen=True, slots=True)
class AssistantRecord:
    content: str
    model: str
    outcome: str  # ok, error, cut_off, streaming (until finished), interrupted (found streaming at start)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    latency_ms: int | None = None


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self._db = engine

    @classmethod
    async def open(cls, url: str) -> Store:
        """The store with its tables; SetupError, in one sentence, when the database cannot be used."""
        parsed = make_url(url)
        engine: AsyncEngine | None = None
        try:
            if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                # aiosqlite (0.22) strands its worker thread when a file cannot be opened, and it fails
                # with a traceback once the loop is closed; the sqlite3 module finds that out cleanly.
                if not parsed.query.get("uri"):
                    await asyncio.to_thread(_open_and_close, parsed.database)
            engine = create_async_engine(url)
            if parsed.get_backend_name() == "sqlite":
                event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
                # A reply still "streaming" when the process starts was cut short by a crash or restart.
                await conn.execute(
                    update(turns).where(turns.c.outcome == "streaming").values(outcome="interrupted")
                )
        except (OSError, sqlite3.Error, SQLAlchemyError) as error:
            if engine is not None:
                await engine.dispose()
            raise SetupError(_unusable(parsed, error)) from None
        return cls(engine)

    async def close(self) -> None:
        await self._db.dispose()

    # Turns

    async def add_assistant_turn(self, conversation: str, record: AssistantRecord, tokens: int) -> int:
        async with self._db.begin() as conn:
            result = await conn.execute(
                insert(turns).values(
                    conversation=conversation,
                    role="assistant",
                    created_at=time.time(),
                    tokens=tokens,
                    **_record_values(record),
                )
            )
            return int(result.inserted_primary_key[0])

    async def update_assistant_turn(self, turn_id: int, record: AssistantRecord, tokens: int) -> None:
        async with self._db.begin() as conn:
            await conn.execute(
                update(turns).where(turns.c.id == turn_id).values(tokens=tokens, **_record_values(record))
            )

    async def add_user_turn_and_recall(
        self,
        conversation: str,
        author_id: str,
        author_name: str,
        content: str,
        tokens: int,
        token_budget: int,
    ) -> tuple[int, list[Turn], bool]:
        """Store a user turn and read back the context it ends, in one transaction: one round trip."""
        async with self._db.begin() as conn:
            result = await conn.execute(
                insert(turns).values(
                    conversation=conversation,
                    role="user",
                    author_id=author_id,
                    author_name=author_name,
                    content=content,
                    tokens=tokens,
                    created_at=time.time(),
                )
            )
            recalled, trimmed = await _recent(conn, conversation, token_budget)
            return int(result.inserted_primary_key[0]), recalled, trimmed

    async def recent_turns(self, conversation: str, token_budget: int) -> tuple[list[Turn], bool]:
        async with self._db.connect() as conn:
            return await _recent(conn, conversation, token_budget)

    async def count_turns(self, conversation: str) -> int:
        async with self._db.connect() as conn:
            query = select(func.count()).select_from(turns).where(turns.c.conversation == conversation)
            return int((await conn.execute(query)).scalar_one())

    async def forget(self, conversation: str) -> int:
        async with self._db.begin() as conn:
            result = await conn.execute(delete(turns).where(turns.c.conversation == conversation))
            return result.rowcount or 0

    # Settings

    async def settings(self, conversations: Sequence[str]) -> list[dict[str, object]]:
        """Stored settings rows for the given conversations, in the order asked (missing ones omitted)."""
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(
                    select(conversation_settings).where(
                        conversation_settings.c.conversation.in_(conversations)
                    )
                )
            ).mappings()
            by_key = {row["conversation"]: dict(row) for row in rows}
        return [by_key[c] for c in conversations if c in by_key]

    async def set_setting(self, conversation: str, name: str, value: object, updated_by: str) -> None:
        if name not in SETTING_FIELDS:
            raise ValueError(f"unknown setting {name}")
        values = {name: value, "updated_by": updated_by, "updated_at": time.time()}
        async with self._db.begin() as conn:
            result = await conn.execute(
                update(conversation_settings)
                .where(conversation_settings.c.conversation == conversation)
                .values(**values)
            )
            if not result.rowcount:
                await conn.execute(insert(conversation_settings).values(conversation=conversation, **values))

    # Dedupe and small durable values

    async def claim_event(self, kind: str, key: str) -> bool:
        """True the first time (kind, key) is claimed, across processes and restarts."""
        try:
            async with self._db.begin() as conn:
                await conn.execute(insert(event_claims).values(kind=kind, key=key, created_at=time.time()))
        except IntegrityError:
            return False
        return True

    async def get_meta(self, name: str) -> str | None:
        async with self._db.connect() as conn:
            return (await conn.execute(select(meta.c.value).where(meta.c.name == name))).scalar()

    async def set_meta(self, name: str, value: str) -> None:
        async with self._db.begin() as conn:
            result = await conn.execute(update(meta).where(meta.c.name == name).values(value=value))
            if not result.rowcount:
                await conn.execute(insert(meta).values(name=name, value=value))


async def _recent(conn: AsyncConnection, conversation: str, token_budget: int) -> tuple[list[Turn], bool]:
    """The newest turns whose token estimates fit the budget, oldest first, and whether older ones exist.

    Reads in pages from the newest end, so the cost depends on what fits, not on how much is stored.
    """
    chosen: list[Turn] = []
    used = 0
    before: int | None = None
    page = FIRST_PAGE
    columns = (
        turns.c.id,
        turns.c.role,
        turns.c.author_name,
        turns.c.content,
        turns.c.tokens,
        turns.c.outcome,
    )
    while True:
        query = (
            select(*columns)
            .where(turns.c.conversation == conversation)
            .order_by(turns.c.id.desc())
            .limit(page)
        )
        if before is not None:
            query = query.where(turns.c.id < before)
        rows = (await conn.execute(query)).all()
        for row in rows:
            if used + row.tokens > token_budget:
                chosen.reverse()
                return chosen, True
            used += row.tokens
            chosen.append(Turn(row.id, row.role, row.author_name, row.content, row.tokens, row.outcome))
        if len(rows) < page:
            chosen.reverse()
            return chosen, False
        before = rows[-1].id
        page *= 4


def _open_and_close(path: str) -> None:
    sqlite3.connect(path).close()


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


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # WAL lets readers proceed while a reply is being written; the busy timeout rides out short locks.
    # synchronous=NORMAL is WAL's recommended pairing: no corruption on a crash, and no fsync per commit
    # (a power cut may lose the last commits; a process crash loses nothing).
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
