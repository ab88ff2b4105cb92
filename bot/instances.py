"""This process among the instances sharing one database: its heartbeat, and its part in leadership."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.exc import SQLAlchemyError

from bot.engine import Engine
from bot.leader import Leader

log = logging.getLogger(__name__)


class Instance:
    """Beats this instance's heartbeat while it runs (an instance that stops beating is dead, and what it
    left is taken over), and takes the lead when it is free."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.leader = Leader(engine)
        self._heartbeat: asyncio.Task[None] | None = None
        self._leading: asyncio.Task[None] | None = None

    def start(self, *, lead: bool = True) -> None:
        """Beat the heartbeat and, with `lead`, take part in leadership. `parley chat` only beats: it
        answers its own terminal and runs nobody's chores, but its replies and budget holds are a live
        instance's."""
        self._heartbeat = asyncio.create_task(self._beat(), name="heartbeat")
        if lead:
            self._leading = asyncio.create_task(self.leader.run(), name="leader")

    async def stop_leading(self) -> None:
        """Before the drain: a stopping instance takes over nobody's work (another leader will)."""
        await _cancel(self._leading)
        await self.leader.step_down()

    async def stop(self) -> None:
        """After the drain: the heartbeat beat until then, so nobody took over replies still finishing."""
        await self.stop_leading()
        await _cancel(self._heartbeat)

    async def _beat(self) -> None:
        every = self.engine.settings.instance_heartbeat_seconds
        while True:
            await asyncio.sleep(every)
            try:
                await self.engine.store.heartbeat()
            except (OSError, SQLAlchemyError) as error:
                log.warning("could not beat this instance's heartbeat (%s); trying again", error)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
