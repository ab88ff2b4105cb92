"""Who waits for whom inside a conversation: each person's messages in order, different people at once."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.models import ConversationKey
from bot.store import Store
from bot.turn_locks import TurnLocks

SHARED_POLL_SECONDS = 0.1  # how often a turn waiting on another instance looks again


class Gate:
    """A person's next message waits for their previous reply, so one person's answers never arrive out of
    order; other people in the same conversation are answered meanwhile. Waiters go in arrival order
    (asyncio locks are fair).

    With a store shared by several instances (PostgreSQL), a turn is also taken there (bot/turn_locks.py):
    a lock per person and conversation, and no earlier message of theirs still unanswered on any instance.
    """

    def __init__(self, store: Store | None = None) -> None:
        self._shared = store.turns if store is not None else None
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
        if self._shared is None or inbox_id is None:
            async with lock:
                yield
            return
        await self._shared_turn(self._shared, lock, key[0], person, inbox_id)
        try:
            yield
        finally:
            try:
                await self._shared.give(key[0], person)
            finally:
                lock.release()

    @staticmethod
    async def _shared_turn(
        shared: TurnLocks, lock: asyncio.Lock, conversation: str, person: str, inbox_id: int
    ) -> None:
        """Take the local lock and the shared turn; between looks, leave the local lock to the others
        here, one of which may hold the earlier message this one waits for (deliveries reach an
        instance in any order)."""
        while True:
            await lock.acquire()
            try:
                if await shared.take(conversation, person, inbox_id):
                    return
            except BaseException:  # cancelled (a stop, a shutdown): the shared turn is given back
                lock.release()
                raise
            lock.release()
            await asyncio.sleep(SHARED_POLL_SECONDS)
