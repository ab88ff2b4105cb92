"""The terminal as a platform: replies appear where the chat session shows them; history is memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from bot.models import ConversationKey, HistoryEntry, Surface
from bot.store import Store

PLATFORM = "console"


class ConsolePlatform:
    name = PLATFORM
    one_reply_at_a_time = True  # one terminal: /compare prints its two answers one after the other

    def __init__(self, store: Store, new_surface: Callable[[], Surface]) -> None:
        self._store = store
        self._new_surface = new_surface  # the session's: a terminal or a pipe surface

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def wait_closed(self) -> None:
        await asyncio.Event().wait()  # a terminal never goes away on its own

    async def surface_for(
        self, conversation: ConversationKey, reply_to: Mapping[str, Any] | None = None
    ) -> Surface:
        return self._new_surface()

    async def reopen(self, conversation: ConversationKey, refs: Mapping[str, Any]) -> Surface:
        return self._new_surface()  # never asked: printed text leaves no refs to reopen

    async def history(
        self,
        conversation: ConversationKey,
        *,
        limit: int,
        before: str | None = None,
        after: str | None = None,
    ) -> list[HistoryEntry]:
        """The stored conversation: in a terminal, memory is all there is."""
        turns = await self._store.history(
            str(conversation), limit, int(before) if before else None, int(after) if after else None
        )
        return [
            HistoryEntry(
                id=str(turn.id),
                author_id=turn.author_id if turn.role == "user" else "parley",
                author_name=turn.author_name if turn.role == "user" else "Parley",
                text=turn.content,
                created_at=turn.created_at,
                by_parley=turn.role == "assistant",
                permalink="",
            )
            for turn in turns
        ]

    async def permalink(self, conversation: ConversationKey, message_id: str) -> str:
        return ""

    async def resolve_channel(self, near: ConversationKey, typed: str) -> ConversationKey | None:
        return None  # one conversation per session: there is no other channel to post in

    async def may_post(self, conversation: ConversationKey) -> bool:
        return True
