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
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._beat(), name="heartbeat"),
            asyncio.create_task(self.leader.run(), name="leader"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.leader.step_down()

    async def _beat(self) -> None:
        every = self.engine.settings.instance_heartbeat_seconds
        while True:
            await asyncio.sleep(every)
            try:
                await self.engine.store.heartbeat()
            except (OSError, SQLAlchemyError) as error:
                log.warning("could not beat this instance's heartbeat (%s); trying again", error)
