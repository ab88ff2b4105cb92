"""Checkpoints of every streaming reply, saved together once per interval of the engine's clock.

One transaction every few seconds writes the text so far of all replies that grew since the last, so a
crash loses at most that much of each, and the cost follows the interval, not how many replies stream
or how slowly they go. A batch that fails is logged and its replies are saved with the next one: a
checkpoint never fails a reply, and never overwrites a reply that was finished meanwhile (the store
writes only rows still streaming).
"""

from __future__ import annotations

import asyncio
import logging

from bot.store import Checkpoint, Store
from bot.streaming import Clock
from bot.tokens import estimate_tokens

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 2.0  # how often the text of streaming replies is saved


class Checkpoints:
    def __init__(self, store: Store, clock: Clock, interval: float = CHECKPOINT_SECONDS) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._due: dict[int, tuple[str, str]] = {}  # turn id → the newest (text, model) not yet saved
        self._saving: dict[int, tuple[str, str]] = {}  # the batch being written now
        self._task: asyncio.Task[None] | None = None

    def note(self, turn_id: int, text: str, model: str) -> None:
        """A reply's text so far, for the next batch; only the newest text of each reply is saved."""
        self._due[turn_id] = (text, model)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="checkpoints")

    def forget(self, turn_id: int) -> None:
        """The reply is being finished: its final record, not a checkpoint, is what its row keeps."""
        self._due.pop(turn_id, None)
        self._saving.pop(turn_id, None)  # should this batch fail, it is not tried again

    async def _run(self) -> None:
        try:
            while self._due:
                await self._clock.sleep(self._interval)
                await self._save()
        finally:
            self._task = None

    async def _save(self) -> None:
        self._saving, self._due = self._due, {}
        checkpoints = [
            Checkpoint(turn_id, text, model, estimate_tokens(text))
            for turn_id, (text, model) in self._saving.items()
        ]
        try:
            await self._store.save_checkpoints(checkpoints)
        except Exception:
            log.exception("could not save %d streaming replies so far; trying again", len(checkpoints))
            for turn_id, due in self._saving.items():  # text that arrived meanwhile is newer and stays
                self._due.setdefault(turn_id, due)
        finally:
            self._saving = {}

    async def aclose(self) -> None:
        """Stop saving; the replies are finished by then, and their final records are what counts."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
