"""The leader: one instance at a time runs the chores of all of them.

On PostgreSQL the leader is whoever holds an advisory lock on a connection of its own; when it dies its
connection closes, the lock is free, and another instance takes it at its next check (within
INSTANCE_HEARTBEAT_SECONDS). On SQLite the one instance leads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from bot.addressing import forget_quiet_threads
from bot.budgets import forget_dead_holds
from bot.engine import Engine
from bot.schedule_store import forget_old_runs
from bot.schema import budget_holds

log = logging.getLogger(__name__)

# Answered inbox rows, long-dead instances, followed threads nobody touched and schedule runs (but each
# schedule's newest) are forgotten after this.
KEEP_SECONDS = 7 * 24 * 3600
PRUNE_EVERY_SECONDS = 3600.0


@runtime_checkable
class LeadingPlatform(Protocol):
    """A platform with work to do once for all instances (Discord's command sync): done by the leader."""

    async def lead(self) -> None: ...

    async def step_down(self) -> None: ...


class Leader:
    """Answers what dead instances left (their pending messages, their half-finished replies) and prunes
    the inbox, while this instance leads. Other jobs that must run once across instances (the scheduler
    of scheduled prompts) register a role: started when this instance is elected, stopped when it steps
    down."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.leading = False
        self._roles: list[tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]] = []
        self._pruned_at = float("-inf")

    def add_role(self, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
        self._roles.append((start, stop))

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.engine.settings.instance_heartbeat_seconds)

    async def check(self) -> None:
        """Take the lead if it is free, then do the chores while leading. A failure is logged; the next
        check tries again."""
        try:
            leading = await self.engine.store.lead()
            if leading != self.leading:
                self.leading = leading
                log.info(
                    "instance %s %s", self.engine.store.instance_id, "leads" if leading else "stepped down"
                )
                for start, stop in self._roles:
                    await (start() if leading else stop())
            if leading:
                await self._chores()
        except Exception:
            log.exception("the leader's chores failed; trying again at the next check")

    async def step_down(self) -> None:
        if self.leading:
            self.leading = False
            for _start, stop in self._roles:
                await stop()

    async def _chores(self) -> None:
        store = self.engine.store
        if store.shared:  # on SQLite nobody else can have died: recovery at start took what was left
            for name in list(self.engine.platforms):
                await self.engine.recover(name)
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_SECONDS:
            self._pruned_at = time.monotonic()
            pruned = await store.prune(KEEP_SECONDS)
            if pruned:
                log.info("pruned %d answered inbox rows and dead instances older than 7 days", pruned)
            if store.shared:
                dead = store.orphaned(budget_holds.c.instance, self.engine.settings.instance_timeout_seconds)
                await store.write(lambda conn: forget_dead_holds(conn, dead))
            before = time.time() - KEEP_SECONDS
            if forgotten := await store.write(lambda conn: forget_quiet_threads(conn, before)):
                log.info("stopped following %d threads untouched for 7 days", forgotten)
            if runs := await store.write(lambda conn: forget_old_runs(conn, before)):
                log.info("forgot %d schedule runs older than 7 days", runs)
            if self.engine.pacer.shared is not None:  # the rate budgets of channels gone quiet
                await self.engine.pacer.shared.forget_idle()
