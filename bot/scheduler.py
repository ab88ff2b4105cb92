"""Runs schedules at their fire times: APScheduler's AsyncIOScheduler wakes Parley, its triggers say when.

A run is claimed in the store first (one per schedule and fire time, whichever process gets there
first), then its prompt goes through `engine.accept` as a message in the schedule's conversation,
answered by a post of Parley's own there (`surface_for` without an incoming message), so a scheduled
post is never an event Parley answers. `parley run` starts one `Scheduler`; `start` and `stop` are all
it needs, so a deployment can run it on one instance only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.models import Author, ConversationKey, Message
from bot.schedule_store import (
    AUTHOR_PREFIX,
    FAILURES_TO_PAUSE,
    Schedule,
    ScheduleStore,
    close_orphaned_runs,
    run_message_id,
)
from bot.schema import schedule_runs
from bot.summarize import conversation_zone
from bot.when import zone

if TYPE_CHECKING:
    from bot.engine import Engine

log = logging.getLogger(__name__)

EARLY = 1.0  # seconds APScheduler's clock may run ahead of the fire time the store holds
# How often the schedules are read again, for changes another process made in the same database (a run
# whose time passed meanwhile runs at once, late rather than never).
RESYNC_SECONDS = 30.0
RESYNC_JOB = "resync"


class Scheduler:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.store = ScheduleStore(engine.store)
        self._timer = AsyncIOScheduler(
            timezone=UTC,
            # A late wake-up (a busy loop) still runs; the store, not APScheduler, decides what runs.
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        )
        self._runs: set[asyncio.Task[None]] = set()
        self._sweeping: asyncio.Task[None] | None = None
        # Any instance stores schedules and runs one now (`/schedule run`); only the one that started
        # this (the leader) wakes at fire times.
        engine.scheduler = self

    async def start(self) -> None:
        """Restore the schedules: make up (or report) runs missed while Parley was down, then wake at
        every active schedule's next fire time."""
        self._timer.start()
        await self._missed()
        await self.sync()
        self._timer.add_job(
            self.sync, "interval", seconds=RESYNC_SECONDS, id=RESYNC_JOB, replace_existing=True
        )
        self._sweeping = asyncio.create_task(self._sweep_every_heartbeat(), name="schedule runs sweep")

    async def stop(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
            self._sweeping = None
        if self._timer.running:
            self._timer.shutdown(wait=False)
            await asyncio.sleep(0)  # APScheduler's asyncio shutdown happens at the loop's next turn
        for run in list(self._runs):
            run.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)

    async def sync(self) -> None:
        """Wake at each active schedule's next run, as the store has it; forget the others."""
        if not self._timer.running:
            return  # not leading: the leader's scheduler wakes for them
        active = {str(s.id): s for s in await self.store.active() if s.next_run_at is not None}
        for job in self._timer.get_jobs():
            if job.id not in active and job.id != RESYNC_JOB:
                job.remove()
        for job_id, schedule in active.items():
            assert schedule.next_run_at is not None
            due = datetime.fromtimestamp(schedule.next_run_at, UTC)
            job = self._timer.get_job(job_id)
            if job is not None and job.next_run_time == due:
                continue
            self._timer.add_job(
                self._fire,
                trigger=schedule.when.trigger(datetime.fromtimestamp(schedule.anchor, UTC)),
                args=[schedule.id],
                id=job_id,
                next_run_time=due,
                replace_existing=True,
            )

    def run_now(self, schedule: Schedule) -> None:
        """`/schedule run ID`: once, now, besides its schedule."""
        self._spawn(schedule, time.time(), "manual")

    async def _fire(self, schedule_id: int) -> None:
        schedule = await self.store.get(schedule_id)
        if schedule is None or schedule.state != "active" or schedule.next_run_at is None:
            return
        if schedule.next_run_at > time.time() + EARLY:  # resumed or moved meanwhile
            return
        fire_at = schedule.next_run_at
        # Fire times that passed while this one waited (a busy loop) are coalesced into it, as
        # APScheduler coalesces its wake-ups: the next run is the first one still ahead.
        upcoming = self._next_after(schedule, max(fire_at, time.time()))
        await self.store.advance(schedule.id, fire_at, upcoming)
        self._spawn(schedule, fire_at, "scheduled")

    def _next_after(self, schedule: Schedule, moment: float) -> float | None:
        anchor = datetime.fromtimestamp(schedule.anchor, UTC)
        fire = schedule.when.next_fire(anchor, datetime.fromtimestamp(moment, UTC))
        return fire.timestamp() if fire is not None else None

    def _spawn(self, schedule: Schedule, fire_at: float, kind: str) -> None:
        task = asyncio.create_task(self._run(schedule, fire_at, kind), name=f"schedule {schedule.id}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _run(self, schedule: Schedule, fire_at: float, kind: str) -> None:
        run_id = await self.store.claim(schedule.id, fire_at, kind, instance=self._engine.store.instance_id)
        if run_id is None:
            log.info("schedule %d: the run at %.3f was claimed elsewhere", schedule.id, fire_at)
            return
        key = ConversationKey.parse(schedule.conversation)
        message = Message(
            key=key,
            # Marked as scheduled in memory: "Ada's schedule 3: PROMPT".
            author=Author(
                f"{AUTHOR_PREFIX}{schedule.id}", f"{schedule.created_by_name}'s schedule {schedule.id}"
            ),
            text=schedule.prompt,
            id=run_message_id(schedule.id, fire_at),
            created_at=fire_at,
        )
        outcome = "error"
        try:
            task = await self._engine.accept(message, None)
            # None: Parley is stopping; the run is stored in the inbox and answered at the next start.
            outcome = "queued" if task is None else await task
        except Exception:
            log.exception("schedule %d: the run at %.3f failed", schedule.id, fire_at)
        if outcome == "command":
            outcome = "ok"
        reply = await self.store.reply_to(key.platform, key.channel_id, message.id)
        failures = await self.store.finish_run(run_id, schedule.id, outcome, reply)
        log.info("schedule %d ran in %s: %s", schedule.id, key, outcome)
        await self._pause_after(schedule.id, key, failures)

    async def _sweep_every_heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._engine.settings.instance_heartbeat_seconds)
            try:
                await self.sweep()
            except Exception:
                log.exception("could not close the runs of stopped instances; trying again")

    async def sweep(self) -> None:
        """Close the runs of instances that died mid-run (their messages are answered, or their cut
        replies repaired, by the leader's recovery first)."""
        orphaned = self._engine.store.orphaned(
            schedule_runs.c.instance, self._engine.settings.instance_timeout_seconds
        )
        closed = await self._engine.store.write(lambda conn: close_orphaned_runs(conn, orphaned))
        for run in closed:
            log.info(
                "schedule %d: a run its stopped instance left is closed: %s", run.schedule_id, run.outcome
            )
            await self._pause_after(run.schedule_id, ConversationKey.parse(run.conversation), run.failures)

    async def _pause_after(self, schedule_id: int, key: ConversationKey, failures: int) -> None:
        if failures >= FAILURES_TO_PAUSE:
            await self.store.set_state(schedule_id, "paused", None)
            await self.sync()
            await self.say(
                key,
                f"Schedule {schedule_id} failed {failures} times in a row, so it is paused; "
                f"`/schedule resume {schedule_id}` starts it again.",
            )

    async def _missed(self) -> None:
        """Runs whose time came while Parley was down: the newest one is made up once when it is at most
        SCHEDULE_CATCHUP_SECONDS late; otherwise they are skipped, and the conversation is told once."""
        now = time.time()
        window = self._engine.settings.schedule_catchup_seconds
        for schedule in await self.store.active():
            if schedule.next_run_at is None or schedule.next_run_at > now:
                continue
            newest = None
            fire: float | None = max(schedule.next_run_at - 0.001, now - window)
            while fire is not None and (fire := self._next_after(schedule, fire)) is not None and fire <= now:
                newest = fire
            await self.store.advance(schedule.id, now, self._next_after(schedule, now))
            if newest is not None:
                self._spawn(schedule, newest, "catchup")
                continue
            if await self.store.claim(schedule.id, schedule.next_run_at, "skipped", outcome="skipped"):
                await self._say_skipped(schedule)

    async def _say_skipped(self, schedule: Schedule) -> None:
        key = ConversationKey.parse(schedule.conversation)
        timezone = await conversation_zone(self._engine, key)
        assert schedule.next_run_at is not None
        missed = shown(schedule.next_run_at, timezone)
        fresh = await self.store.get(schedule.id)
        upcoming = ""
        if fresh is not None and fresh.next_run_at is not None:
            upcoming = f" It runs next at {shown(fresh.next_run_at, timezone)}."
        await self.say(
            key,
            f"Parley was offline when schedule {schedule.id} ({schedule.when.text}) was due at {missed}, "
            f"too long ago to make up, so that run was skipped.{upcoming}",
        )

    async def say(self, key: ConversationKey, text: str) -> None:
        """A line of Parley's own in a conversation (a paused or skipped schedule)."""
        platform = self._engine.platforms.get(key.platform)
        if platform is None:
            log.warning("schedule note for %s not posted: its platform is not running", key)
            return
        try:
            surface = await platform.surface_for(key, None)
            await self._engine.pacer.renderer(surface).finish(f"_{text}_")
        except Exception:
            log.exception("could not post a schedule note in %s", key)


def shown(moment: float, timezone: str) -> str:
    """A time as the conversation reads it: `Mon 2026-12-07 09:00 CET`."""
    return datetime.fromtimestamp(moment, zone(timezone)).strftime("%a %Y-%m-%d %H:%M %Z")
