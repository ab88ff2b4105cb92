"""A reply's assistant turn while it streams, so a crash loses little and can be repaired on the platform.

The row is written at the reply's first render, with where the platform shows it; its text is saved every
few seconds of the engine's clock; its final record is saved in the same transaction that closes the
message in the inbox. A failed intermediate write is logged and tried again later: it never fails a reply.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bot.models import Surface
from bot.store import AssistantRecord, InboxEntry, Store
from bot.streaming import Clock
from bot.tokens import estimate_tokens

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 2.0  # how often a streaming reply's text is saved


class StoredReply:
    def __init__(self, store: Store, clock: Clock, entry: InboxEntry, surface: Surface) -> None:
        self._store = store
        self._clock = clock
        self._entry = entry
        self._surface = surface
        self._lock = asyncio.Lock()  # renders and tokens both write; one at a time
        self.turn_id: int | None = None
        self._refs: dict[str, Any] | None = None
        self._saved_at = clock.now()

    @property
    def _conversation(self) -> str:
        return str(self._entry.message.key)

    async def shown(self, text: str, model: str) -> None:
        """After a render: the row exists from the first one on, and knows where the reply shows."""
        refs = self._surface.refs
        if refs is None or (self.turn_id is not None and refs == self._refs):
            return
        shown_at = self._clock.now()
        async with self._lock:
            try:
                if self.turn_id is None:
                    self.turn_id = await self._store.start_reply(
                        self._conversation,
                        self._entry.turn_id,
                        self._entry.message.author.id,
                        AssistantRecord(text, model, "streaming"),
                        estimate_tokens(text),
                        refs,
                    )
                    self._saved_at = shown_at
                else:
                    await self._store.save_refs(self.turn_id, refs)
                self._refs = refs
            except Exception:
                log.exception("could not record where the reply in %s shows", self._conversation)

    async def checkpoint(self, text: str, model: str) -> None:
        """Save the text so far, at most every CHECKPOINT_SECONDS; nothing before the row exists."""
        if self.turn_id is None or self._clock.now() - self._saved_at < CHECKPOINT_SECONDS:
            return
        async with self._lock:
            self._saved_at = self._clock.now()
            try:
                record = AssistantRecord(text, model, "streaming")
                await self._store.update_reply(self.turn_id, record, estimate_tokens(text))
            except Exception:
                log.exception("could not save the reply in %s so far; trying again later", self._conversation)

    async def finish(self, record: AssistantRecord) -> None:
        async with self._lock:
            try:
                await self._store.finish_reply(
                    self._entry.id,
                    self._conversation,
                    self.turn_id,
                    self._entry.turn_id,
                    self._entry.message.author.id,
                    record,
                    estimate_tokens(record.content),
                )
            except Exception:
                log.exception("could not save the reply in %s", self._conversation)
