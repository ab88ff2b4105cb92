"""Who waits for whom inside a conversation: each person's messages in order, different people at once."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.models import ConversationKey


class Gate:
    """A person's next message waits for their previous reply, so one person's answers never arrive out of
    order; other people in the same conversation are answered meanwhile. Waiters go in arrival order
    (asyncio locks are fair)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @asynccontextmanager
    async def turn(self, conversation: ConversationKey, person: str) -> AsyncIterator[None]:
        key = (str(conversation), person)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            yield
