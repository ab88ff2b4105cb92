"""Leases on a platform's gateway shards, shared by the instances on one database, and the slot each new
gateway session waits for.

A platform whose gateway is split into shards (Discord) runs one connection per shard this instance
holds. On PostgreSQL a shard is held with a session advisory lock on a connection of its own: when the
instance dies its connection closes, the lock is free, and a live instance takes the shard at its next
look. On SQLite the one instance holds every shard.

Starting a session (Discord's IDENTIFY) is limited per rate-limit bucket (`shard % max_concurrency`):
one per bucket every 5 seconds (and a second to spare), whichever instance starts it. On PostgreSQL
the bucket's last start is a row in `meta`, taken by the database's clock, so an instance that dies
right after identifying still holds back the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import defaultdict

from sqlalchemy import Connection, cast, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Float

from bot.schema import meta
from bot.store import Store

log = logging.getLogger(__name__)

IDENTIFY_SECONDS = 5.0  # Discord: max_concurrency IDENTIFYs per 5 seconds, one per bucket
# Discord counts from when an IDENTIFY arrives, a slot from when it is taken, just before sending: a
# second apart, one sent late after its slot (a busy loop) still arrives 5 seconds after the one before.
SLOT_SECONDS = IDENTIFY_SECONDS + 1.0


class Leases:
    """Which of a platform's `count` shards this instance holds, and its fair share of them.

    On PostgreSQL each instance running the platform's shards holds a membership lock beside its leases,
    on the same connection, so the count of members is exact the moment one dies (its connection closes,
    and both go). An instance takes free shards up to its share, `ceil(count / members)`, and gives one
    up per look while it holds more (an instance that joined takes it), so the shards spread evenly.
    """

    def __init__(self, store: Store, platform: str, count: int) -> None:
        self._store = store
        self._platform = platform
        self.count = count
        self.held: set[int] = set()
        self._connection: AsyncConnection | None = None
        # Two-part advisory lock keys: (space, shard) for a lease, (space, backend pid) for a member.
        self._leases = _space(f"{platform}:shards")
        self._members = _space(f"{platform}:shard-holders")

    async def take_free(self) -> list[int]:
        """Win the leases of free shards, up to this instance's share; the ones won now, lowest first."""
        free = [shard for shard in range(self.count) if shard not in self.held]
        if not self._store.shared:
            self.held.update(free)
            return free
        won = []
        try:
            connection = await self._connected()
            share = await self._share(connection)
            for shard in free:
                if len(self.held) >= share:
                    break
                query = text("SELECT pg_try_advisory_lock(:space, :shard)")
                if (await connection.execute(query, {"space": self._leases, "shard": shard})).scalar():
                    won.append(shard)
                    self.held.add(shard)
        except (OSError, SQLAlchemyError) as error:
            log.warning("could not take %s shard leases (%s); trying again", self._platform, error)
            await self._disconnect()
        return won

    async def surplus(self) -> int | None:
        """A shard to give up because this instance holds more than its share (others joined)."""
        if not self._store.shared or self._connection is None or not self.held:
            return None
        try:
            share = await self._share(self._connection)
        except (OSError, SQLAlchemyError):
            return None  # the next look at the connection finds out
        return max(self.held) if len(self.held) > share else None

    async def lost(self) -> list[int]:
        """The shards whose leases went since the last look: all of them when their connection is gone
        (the server released its locks)."""
        if not self._store.shared:
            return []
        if self._connection is None:
            gone, self.held = sorted(self.held), set()  # held on a connection that failed
            return gone
        try:
            await self._connection.execute(text("SELECT 1"))
        except (OSError, SQLAlchemyError) as error:
            log.warning("lost the connection that holds %s shard leases (%s)", self._platform, error)
            await self._disconnect()
            gone, self.held = sorted(self.held), set()
            return gone
        return []

    async def release(self, shard: int) -> None:
        """Give a shard up (its connection failed, or it is surplus): another instance may take it."""
        if shard not in self.held:
            return
        self.held.discard(shard)
        if self._connection is None:
            return
        query = text("SELECT pg_advisory_unlock(:space, :shard)")
        try:
            await self._connection.execute(query, {"space": self._leases, "shard": shard})
        except (OSError, SQLAlchemyError):
            await self._disconnect()  # a closed connection released every lease on it

    async def close(self) -> None:
        self.held.clear()
        await self._disconnect()

    async def _connected(self) -> AsyncConnection:
        if self._connection is None:
            connection = await self._store.lock_connection()
            query = text("SELECT pg_advisory_lock(:space, pg_backend_pid())")
            await connection.execute(query, {"space": self._members})
            self._connection = connection
        return self._connection

    async def _share(self, connection: AsyncConnection) -> int:
        """ceil(count / members): the most shards one instance should hold now."""
        query = text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
            "AND classid = CAST(:space AS oid) "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        members = (await connection.execute(query, {"space": self._members})).scalar() or 1
        return math.ceil(self.count / members)

    async def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError, SQLAlchemyError):
                await self._connection.close()
        self._connection = None


def _space(name: str) -> int:
    """A positive 32-bit key for one kind of advisory lock (the first half of a two-part key)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big") & 0x7FFFFFFF


class IdentifySlots:
    """Waits until a shard may start a new session: one per bucket every SLOT_SECONDS."""

    def __init__(self, store: Store, platform: str, max_concurrency: int = 1) -> None:
        self._store = store
        self._platform = platform
        self.max_concurrency = max(1, max_concurrency)
        self._local: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._started: dict[int, float] = {}  # SQLite: by bucket, the monotonic time of its last start

    async def wait(self, shard: int) -> None:
        bucket = shard % self.max_concurrency
        async with self._local[bucket]:
            while True:
                delay = await self._take(bucket)
                if delay <= 0:
                    return
                await asyncio.sleep(delay)

    async def _take(self, bucket: int) -> float:
        """0 when this bucket's slot is taken now; otherwise how long until it frees."""
        if not self._store.shared:
            now, last = time.monotonic(), self._started.get(bucket, float("-inf"))
            if now - last < SLOT_SECONDS:
                return SLOT_SECONDS - (now - last)
            self._started[bucket] = now
            return 0.0
        name = f"{self._platform}:identify:{bucket}"
        try:
            return await self._store.write(lambda conn: _take_slot(conn, name, SLOT_SECONDS))
        except (OSError, SQLAlchemyError) as error:
            log.warning("could not take an identify slot (%s); trying again", error)
            return 1.0


def _take_slot(conn: Connection, name: str, seconds: float) -> float:
    """Take the slot `name` when its last start is `seconds` old by the database's clock (one statement:
    of two instances racing, one sees the other's start); otherwise how long is left."""
    now = func.extract("epoch", func.clock_timestamp())
    statement = insert(meta).values(name=name, value=cast(now, Float).cast(meta.c.value.type))
    statement = statement.on_conflict_do_update(
        index_elements=[meta.c.name],
        set_={"value": statement.excluded.value},
        where=cast(meta.c.value, Float) <= cast(now, Float) - seconds,
    ).returning(meta.c.value)
    if conn.execute(statement).first() is not None:
        return 0.0
    started = conn.execute(select(cast(meta.c.value, Float)).where(meta.c.name == name)).scalar_one()
    elapsed = conn.execute(select(cast(now, Float))).scalar_one() - started
    return max(0.05, seconds - elapsed)
