"""A reply's assistant turn while it streams, so a crash loses little and can be repaired on the platform.

The row is written at the reply's first render, with where the platform shows it; its text is saved with
every other streaming reply's every few seconds of the engine's clock (bot/checkpoints.py); its final
record is saved in the same transaction that closes the message in the inbox. A failed intermediate write
is logged and tried again later: it never fails a reply.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bot.checkpoints import Checkpoints
from bot.models import Surface
from bot.store import AssistantRecord, InboxEntry, Store
from bot.tokens import estimate_tokens

log = logging.getLogger(__name__)


class StoredReply:
    def __init__(self, store: Store, checkpoints: Checkpoints, entry: InboxEntry, surface: Surface) -> None:
        self._store = store
        self._checkpoints = checkpoints
        self._entry = entry
        self._surface = surface
        self._lock = asyncio.Lock()  # the first render's row, later refs and the final record: one at a time
        self.turn_id: int | None = None
        self._refs: dict[str, Any] | None = None

    @property
    def _conversation(self) -> str:
        return str(self._entry.message.key)

    async def shown(self, text: str, model: str) -> None:
        """After a render: the row exists from the first one on, and knows where the reply shows."""
        refs = self._surface.refs
        if refs is None or (self.turn_id is not None and refs == self._refs):
            return
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
                else:
                    await self._store.save_refs(self.turn_id, refs)
                self._refs = refs
            except Exception:
                log.exception("could not record where the reply in %s shows", self._conversation)

    def checkpoint(self, text: str, model: str) -> None:
        """The text so far, for the next batch of checkpoints; nothing before the row exists."""
        if self.turn_id is not None:
            self._checkpoints.note(self.turn_id, text, model)

    async def finish(self, record: AssistantRecord) -> None:
        async with self._lock:
            if self.turn_id is not None:
                self._checkpoints.forget(self.turn_id)
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
