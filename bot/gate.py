"""Who waits for whom inside a conversation: each person's messages in order, different people at once."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.models import ConversationKey
from bot.store import Store

SHARED_POLL_SECONDS = 0.1  # how often a turn waiting on another instance looks again


class Gate:
    """A person's next message waits for their previous reply, so one person's answers never arrive out of
    order; other people in the same conversation are answered meanwhile. Waiters go in arrival order
    (asyncio locks are fair).

    With a store shared by several instances (PostgreSQL), a turn is also taken there: an advisory lock
    per person and conversation, and no earlier message of theirs still unanswered on any instance (the
    inbox's order is the order they were accepted in). Locks are taken on the store's own lock connection
    without waiting on it, so a turn's holder never competes with its waiters for pooled connections.
    """

    def __init__(self, store: Store | None = None) -> None:
        self._store = store if store is not None and store.shared else None
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @asynccontextmanager
    async def turn(
        self, conversation: ConversationKey, person: str, inbox_id: int | None = None
    ) -> AsyncIterator[None]:
        key = (str(conversation), person)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        if self._store is None or inbox_id is None:
            async with lock:
                yield
            return
        name = f"turn:{key[0]}:{person}"
        await self._shared_turn(self._store, lock, name, key[0], person, inbox_id)
        try:
            yield
        finally:
            try:
                await self._store.unlock(name)
            finally:
                lock.release()

    @staticmethod
    async def _shared_turn(
        store: Store, lock: asyncio.Lock, name: str, conversation: str, person: str, inbox_id: int
    ) -> None:
        """Take the local lock and the shared turn; between looks, leave the local lock to the others
        here, one of which may hold the earlier message this one waits for (deliveries reach an
        instance in any order)."""
        while True:
            await lock.acquire()
            try:
                if await store.try_lock(name):
                    if not await store.earlier_pending(conversation, person, inbox_id):
                        return
                    await store.unlock(name)
            except BaseException:  # cancelled (a stop, a shutdown): hold nothing
                try:
                    await store.unlock(name)
                finally:
                    lock.release()
                raise
            lock.release()
            await asyncio.sleep(SHARED_POLL_SECONDS)
