"""Schedules and their runs in Parley's own tables; a run is claimed once per (schedule, fire time)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, Connection, and_, desc, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from bot.models import ConversationKey
from bot.schema import inbox, schedule_runs, schedules, turns
from bot.when import When

if TYPE_CHECKING:
    from bot.store import Store

FAILURES_TO_PAUSE = 3  # failed runs in a row that pause a schedule
AUTHOR_PREFIX = "schedule:"  # the author id of a schedule's runs: "schedule:3"
FAILED = ("error", "interrupted")  # the outcomes that count towards the pause


@dataclass(frozen=True, slots=True)
class Schedule:
    id: int
    conversation: str  # where it runs and posts
    origin: str  # where it was made
    prompt: str
    when: When
    anchor: float
    state: str  # active, paused, done
    next_run_at: float | None
    failures: int
    created_by: str
    created_by_name: str
    target_text: str | None = None  # the other channel it posts in, as it was named
    last_outcome: str | None = None


class ScheduleStore:
    """Each method is one transaction, run through the store's one path to the database."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(
        self,
        *,
        conversation: str,
        origin: str,
        prompt: str,
        when: When,
        anchor: float,
        next_run_at: float | None,
        created_by: str,
        created_by_name: str,
        target_text: str | None = None,
    ) -> int:
        statement = insert(schedules).values(
            conversation=conversation,
            origin=origin,
            prompt=prompt,
            when_text=when.text,
            kind=when.kind,
            spec=when.spec,
            timezone=when.timezone,
            anchor=anchor,
            state="active",
            next_run_at=next_run_at,
            failures=0,
            created_by=created_by,
            created_by_name=created_by_name,
            target_text=target_text,
            created_at=time.time(),
        )
        return await self._store.write(lambda conn: int(conn.execute(statement).inserted_primary_key[0]))

    async def count(self, origin: str) -> int:
        query = select(func.count()).select_from(schedules).where(schedules.c.origin == origin)
        return int(await self._store.read(lambda conn: conn.execute(query).scalar_one()))

    async def listed(self, origin: str) -> list[Schedule]:
        """The schedules made in a conversation, oldest first, with their last run's outcome."""
        return await self._select(schedules.c.origin == origin)

    async def get(self, schedule_id: int) -> Schedule | None:
        found = await self._select(schedules.c.id == schedule_id)
        return found[0] if found else None

    async def active(self) -> list[Schedule]:
        return await self._select(schedules.c.state == "active")

    async def _select(self, condition: object) -> list[Schedule]:
        last = (
            select(schedule_runs.c.outcome)
            .where(schedule_runs.c.schedule_id == schedules.c.id, schedule_runs.c.outcome != "running")
            .order_by(desc(schedule_runs.c.id))
            .limit(1)
            .scalar_subquery()
        )
        query = select(schedules, last.label("last_outcome")).where(condition).order_by(schedules.c.id)
        rows = await self._store.read(lambda conn: conn.execute(query).mappings().all())
        return [
            Schedule(
                id=row["id"],
                conversation=row["conversation"],
                origin=row["origin"],
                prompt=row["prompt"],
                when=When(row["kind"], row["spec"], row["timezone"], row["when_text"]),
                anchor=row["anchor"],
                state=row["state"],
                next_run_at=row["next_run_at"],
                failures=row["failures"],
                created_by=row["created_by"],
                created_by_name=row["created_by_name"],
                target_text=row["target_text"],
                last_outcome=row["last_outcome"],
            )
            for row in rows
        ]

    async def set_state(self, schedule_id: int, state: str, next_run_at: float | None) -> None:
        statement = (
            update(schedules)
            .where(schedules.c.id == schedule_id)
            .values(state=state, next_run_at=next_run_at, failures=0)
        )
        await self._store.write(lambda conn: conn.execute(statement))

    async def advance(self, schedule_id: int, fired_at: float, next_run_at: float | None) -> None:
        """Move the next run on past `fired_at`, unless another process already moved it further."""
        values = {"next_run_at": next_run_at} if next_run_at is not None else {"next_run_at": None}
        if next_run_at is None:
            values["state"] = "done"
        statement = (
            update(schedules)
            .where(
                schedules.c.id == schedule_id,
                schedules.c.state == "active",
                schedules.c.next_run_at <= fired_at,
            )
            .values(**values)
        )
        await self._store.write(lambda conn: conn.execute(statement))

    async def delete(self, schedule_id: int) -> None:
        def work(conn: Connection) -> None:
            conn.execute(schedule_runs.delete().where(schedule_runs.c.schedule_id == schedule_id))
            conn.execute(schedules.delete().where(schedules.c.id == schedule_id))

        await self._store.write(work)

    # Runs

    async def claim(
        self,
        schedule_id: int,
        fire_at: float,
        kind: str,
        outcome: str = "running",
        instance: str | None = None,
    ) -> int | None:
        """Take the run of this fire time for `instance`; None when another process (or an earlier start)
        has it."""
        statement = insert(schedule_runs).values(
            schedule_id=schedule_id,
            fire_at=fire_at,
            kind=kind,
            outcome=outcome,
            started_at=time.time(),
            instance=instance,
        )
        try:
            return await self._store.write(lambda conn: int(conn.execute(statement).inserted_primary_key[0]))
        except IntegrityError:
            return None

    async def finish_run(self, run_id: int, schedule_id: int, outcome: str, reply: str | None) -> int:
        """Record how a run ended; returns the schedule's failed runs in a row since."""
        failed = outcome == "error"

        def work(conn: Connection) -> int:
            conn.execute(
                update(schedule_runs)
                .where(schedule_runs.c.id == run_id)
                .values(outcome=outcome, reply=reply, finished_at=time.time())
            )
            conn.execute(
                update(schedules)
                .where(schedules.c.id == schedule_id)
                .values(failures=schedules.c.failures + 1 if failed else 0)
            )
            failures = conn.execute(select(schedules.c.failures).where(schedules.c.id == schedule_id))
            return int(failures.scalar() or 0)

        return await self._store.write(work)

    async def runs(self, schedule_id: int) -> list[tuple[float, str, str, str | None]]:
        """(fire time, kind, outcome, reply) of every run, oldest first."""
        query = (
            select(
                schedule_runs.c.fire_at, schedule_runs.c.kind, schedule_runs.c.outcome, schedule_runs.c.reply
            )
            .where(schedule_runs.c.schedule_id == schedule_id)
            .order_by(schedule_runs.c.id)
        )
        rows = await self._store.read(lambda conn: conn.execute(query).all())
        return [tuple(row) for row in rows]  # type: ignore[misc]

    async def reply_to(self, platform: str, channel: str, message_id: str) -> str | None:
        """The stored answer to an accepted message (a run's prompt)."""
        query = (
            select(turns.c.content)
            .select_from(
                inbox.join(turns, and_(turns.c.answers == inbox.c.turn_id, turns.c.role == "assistant"))
            )
            .where(inbox.c.platform == platform, inbox.c.channel == channel, inbox.c.message_id == message_id)
            .order_by(desc(turns.c.id))
            .limit(1)
        )
        return await self._store.read(lambda conn: conn.execute(query).scalar())


def run_message_id(schedule_id: int, fire_at: float) -> str:
    """The id of the message a run sends into its conversation's inbox."""
    return f"schedule-{schedule_id}-{fire_at:.3f}"


@dataclass(frozen=True, slots=True)
class ClosedRun:
    schedule_id: int
    conversation: str
    outcome: str
    failures: int  # the schedule's failed runs in a row, this one counted


def close_orphaned_runs(conn: Connection, orphaned: ColumnElement[bool]) -> list[ClosedRun]:
    """Close the runs that instances which died left "running", once nothing of theirs is still under way.

    A run's message is in the inbox (its instance accepted it before dying): while it is pending the
    recovery of dead instances' messages answers it, and the run waits; then the run takes the outcome
    of that answer ("interrupted" when its reply had been cut and was repaired, whatever the answer's
    was when it was answered afresh). A run that died before its message was accepted is "interrupted"
    with no reply. The outcome counts towards the pause as a finished run's does when it is the
    schedule's newest run; an older one's would count out of order, so it is only recorded."""
    runs = conn.execute(
        select(
            schedule_runs.c.id, schedule_runs.c.schedule_id, schedule_runs.c.fire_at, schedules.c.conversation
        )
        .join(schedules, schedules.c.id == schedule_runs.c.schedule_id)
        .where(schedule_runs.c.outcome == "running", orphaned)
        .order_by(schedule_runs.c.fire_at)
    ).all()
    closed = []
    for run in runs:
        key = ConversationKey.parse(run.conversation)
        message = conn.execute(
            select(inbox.c.state, inbox.c.turn_id).where(
                inbox.c.platform == key.platform,
                inbox.c.channel == key.channel_id,
                inbox.c.message_id == run_message_id(run.schedule_id, run.fire_at),
            )
        ).first()
        if message is not None and message.state == "pending":
            continue  # being answered by the recovery: closed at a later sweep
        answer = None
        if message is not None and message.turn_id is not None:
            answer = conn.execute(
                select(turns.c.outcome, turns.c.content)
                .where(turns.c.answers == message.turn_id, turns.c.role == "assistant")
                .order_by(desc(turns.c.id))
                .limit(1)
            ).first()
        if answer is not None and answer.outcome == "streaming":
            continue  # its reply is still being repaired or given
        outcome = answer.outcome if answer is not None else "interrupted"
        done = conn.execute(
            update(schedule_runs)
            .where(schedule_runs.c.id == run.id, schedule_runs.c.outcome == "running")
            .values(outcome=outcome, reply=answer.content if answer else None, finished_at=time.time())
        )
        if done.rowcount != 1:
            continue  # closed meanwhile by another sweep
        later = exists().where(
            schedule_runs.c.schedule_id == run.schedule_id,
            schedule_runs.c.fire_at > run.fire_at,
            schedule_runs.c.outcome != "skipped",
        )
        if not conn.execute(select(later)).scalar():
            failed = outcome in FAILED
            conn.execute(
                update(schedules)
                .where(schedules.c.id == run.schedule_id)
                .values(failures=schedules.c.failures + 1 if failed else 0)
            )
        failures = conn.execute(select(schedules.c.failures).where(schedules.c.id == run.schedule_id))
        closed.append(ClosedRun(run.schedule_id, run.conversation, outcome, int(failures.scalar() or 0)))
    return closed


def forget_old_runs(conn: Connection, before: float) -> int:
    """Forget finished runs of fire times before `before`, keeping each schedule's newest (its last
    outcome, which `/schedule list` shows); how many. A fire time that old never runs again, so its
    claim is not needed."""
    newest = select(func.max(schedule_runs.c.id)).group_by(schedule_runs.c.schedule_id)
    result = conn.execute(
        schedule_runs.delete().where(
            schedule_runs.c.fire_at < before,
            schedule_runs.c.outcome != "running",
            schedule_runs.c.id.not_in(newest),
        )
    )
    return result.rowcount or 0
