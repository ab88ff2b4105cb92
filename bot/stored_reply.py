"""A reply's assistant turn while it streams, so a crash loses little and can be repaired on the platform.

The row is written at the reply's first render, with where the platform shows it; its text is saved with
every other streaming reply's every few seconds of the engine's clock (bot/checkpoints.py); its final
record is saved in the same transaction that closes the message in the inbox and records its usage. A
failed intermediate write is logged and tried again later: it never fails a reply.

The row and its later refs are written beside the renders, not in their way: with a thousand replies
starting at once the store answers the first render's write seconds later, and a render loop that waited
for it would leave the reply's next edits waiting as long. What streamed meanwhile is saved with the next
batch of checkpoints, and the final record waits for the row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
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
        self.turn_id: int | None = None
        self._refs: dict[str, Any] | None = None  # where the row says the reply shows
        self._wanted: dict[str, Any] | None = None  # where the newest render says it shows
        self._unsaved: tuple[str, str] | None = None  # the newest (text, model) before the row existed
        self._recording: asyncio.Task[None] | None = None

    @property
    def _conversation(self) -> str:
        return str(self._entry.message.key)

    def shown(self, text: str, model: str) -> None:
        """After a render: the row exists from the first one on, and knows where the reply shows."""
        refs = self._surface.refs
        if refs is None or refs == self._wanted:
            return
        self._wanted = refs
        if self._recording is None or self._recording.done():
            self._recording = asyncio.create_task(self._record(text, model))

    async def _record(self, text: str, model: str) -> None:
        """Write the row, then any newer refs, until the row says what the newest render does."""
        while (refs := self._wanted) is not None and refs != self._refs:
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
                    if self._unsaved is not None and self._unsaved[0] != text:
                        self._checkpoints.note(self.turn_id, *self._unsaved)
                    self._unsaved = None
                else:
                    await self._store.save_refs(self.turn_id, refs)
                self._refs = refs
            except Exception:
                log.exception("could not record where the reply in %s shows", self._conversation)
                self._wanted = self._refs  # the next render tries again
                return

    def checkpoint(self, text: str, model: str) -> None:
        """The text so far, for the next batch of checkpoints (kept for the row until it exists)."""
        if self.turn_id is None:
            self._unsaved = (text, model)
        else:
            self._checkpoints.note(self.turn_id, text, model)

    async def finish(self, record: AssistantRecord, usage_rows: Sequence[dict[str, Any]] = ()) -> bool:
        """Save the final record, with the reply's usage rows in its transaction (one store hop, not
        two); whether it was saved (if not, the usage is the caller's to record)."""
        if self._recording is not None:  # the final record updates the row, never writes a second
            await asyncio.shield(self._recording)
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
                usage_rows,
            )
        except Exception:
            log.exception("could not save the reply in %s", self._conversation)
            return False
        return True
