"""/schedule through the engine and a running Scheduler, against the recording platform: runs fire and
post without an incoming message, are claimed once per fire time, restored after a restart, made up or
skipped after downtime, and paused after three failures. Runs are awaited by their records, never by
sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot import scheduler as scheduler_module
from bot.engine import RESTARTED_NOTE, Engine
from bot.leader import KEEP_SECONDS, Leader
from bot.models import Author, ConversationKey, Message
from bot.schedule_store import ScheduleStore, run_message_id
from bot.scheduler import Scheduler
from bot.store import AssistantRecord
from tests.conftest import RecordingPlatform
from tests.support.asking import ADA, CHANNEL, ask, msg
from tests.support.history import said
from tests.support.llm_server import LLMServer, Script

MANAGER = Author("u-mia", "Mia", is_channel_manager=True)


async def command(engine: Engine, line: str, author: Author = MANAGER, key: ConversationKey = CHANNEL) -> str:
    return (await engine.run_command(msg("/" + line, key, author), line)).text


async def until(condition: Callable[[], Any], seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def recorded(scheduler: Scheduler, schedule_id: int, count: int) -> list[tuple[Any, ...]]:
    """The schedule's runs once `count` of them have finished (been recorded with their outcome)."""
    async with asyncio.timeout(20):
        while True:
            runs = await scheduler.store.runs(schedule_id)
            if sum(outcome != "running" for _, _, outcome, _ in runs) >= count:
                return runs
            await asyncio.sleep(0.02)


def posts(platform: RecordingPlatform, key: ConversationKey = CHANNEL) -> list[str]:
    """The finished posts nobody asked for (scheduled runs and notes) in a conversation."""
    return [
        s.final
        for k, reply_to, s in platform.surfaces
        if k == key and not reply_to and s.renders and s.renders[-1][1]
    ]


@pytest.fixture
async def running(make_engine: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """Engines with their scheduler started, as `parley run` starts it; stopped at the end."""
    started: list[tuple[Engine, Scheduler]] = []

    async def start(**overrides: Any) -> tuple[Engine, Scheduler]:
        engine = await make_engine(**{"schedule_min_interval": 1, **overrides})
        scheduler = Scheduler(engine)
        await scheduler.start()
        started.append((engine, scheduler))
        return engine, scheduler

    yield start
    for engine, scheduler in started:
        await engine.drain(1)
        await scheduler.stop()


async def test_a_schedule_fires_posts_in_its_conversation_and_is_recorded(
    running: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine, scheduler = await running()
    answer = await command(engine, "schedule add every 2 seconds say the build is green")
    assert answer.startswith("Schedule 1 added: every 2 seconds (UTC). Next run: ")
    runs = await recorded(scheduler, 1, 2)
    assert posts(platform)[:2] == ["echo: Mia's schedule 1: say the build is green"] * 2
    assert [(kind, outcome) for _, kind, outcome, _ in runs[:2]] == [("scheduled", "ok")] * 2
    assert runs[0][3] == "echo: Mia's schedule 1: say the build is green"
    # Fire times, not wake-up times: whole intervals apart (more than one if the loop was held up).
    gap = runs[1][0] - runs[0][0]
    assert gap >= 2.0 and gap / 2.0 == pytest.approx(round(gap / 2.0))
    # In memory like any turn, marked as the schedule's.
    history = await engine.store.history(str(CHANNEL), 10)
    assert ("user", "Mia's schedule 1", "say the build is green") in [
        (t.role, t.author_name, t.content) for t in history
    ]
    listed = await command(engine, "schedule list", ADA)  # listing is for everyone
    assert listed.startswith("Schedules here (times in UTC):\n1: every 2 seconds, next ")
    assert listed.endswith(", here, active, last ok — say the build is green")


async def test_an_instance_that_does_not_lead_stores_schedules_and_runs_one_now(
    make_engine: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine = await make_engine(schedule_min_interval=1)
    scheduler = Scheduler(engine)  # built as `parley run` builds it; started only while it leads
    assert (await command(engine, "schedule add every 1 hour hourly news")).startswith("Schedule 1 added")
    assert scheduler._timer.get_jobs() == []  # fire times are the leader's
    assert await command(engine, "schedule run 1") == "Schedule 1 is running now."
    await recorded(scheduler, 1, 1)
    assert posts(platform) == ["echo: Mia's schedule 1: hourly news"]
    # The lead comes, goes and comes back: each time the timer wakes for the schedule again.
    await scheduler.start()
    assert scheduler._timer.get_job("1") is not None
    await scheduler.stop()
    await scheduler.start()
    assert scheduler._timer.get_job("1") is not None
    await engine.drain(1)
    await scheduler.stop()


async def test_pause_resume_run_and_delete(
    running: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine, scheduler = await running()
    await command(engine, "schedule add every 1 hour hourly news")
    assert await command(engine, "schedule run 1") == "Schedule 1 is running now."
    await recorded(scheduler, 1, 1)
    assert posts(platform) == ["echo: Mia's schedule 1: hourly news"]
    assert await command(engine, "schedule pause 1") == (
        "Schedule 1 paused; `/schedule resume 1` starts it again."
    )
    assert scheduler._timer.get_job("1") is None  # nothing left to wake for
    assert ", paused, last ok" in await command(engine, "schedule list")
    resumed = await command(engine, "schedule resume 1")
    assert resumed.startswith("Schedule 1 resumed. Next run: ") and scheduler._timer.get_job("1")
    assert await command(engine, "schedule delete 1") == "Schedule 1 deleted."
    assert scheduler._timer.get_job("1") is None
    assert await command(engine, "schedule list") == (
        "No schedules here. Add one with `/schedule add every weekday at 9:00 PROMPT`."
    )


async def test_one_run_per_fire_time_even_when_two_processes_fire_it(
    running: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    first, one = await running()
    _, two = await running()  # a second process on the same database
    await command(first, "schedule add every 1 hour the digest")
    (schedule,) = await one.store.active()
    fire_at = time.time()
    await asyncio.gather(one._run(schedule, fire_at, "scheduled"), two._run(schedule, fire_at, "scheduled"))
    assert posts(platform) == ["echo: Mia's schedule 1: the digest"]
    assert len(await one.store.runs(schedule.id)) == 1


async def test_a_restart_restores_schedules_and_runs_them(
    running: Callable[..., Any], make_engine: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine, scheduler = await running()
    await command(engine, "schedule add every 2 seconds still here")
    await engine.drain(1)
    await scheduler.stop()
    assert posts(platform) == []
    _, again = await running()
    assert again._timer.get_job("1") is not None
    await recorded(again, 1, 1)
    assert posts(platform)[0] == "echo: Mia's schedule 1: still here"


async def test_a_run_missed_within_the_catchup_window_is_made_up_once(
    make_engine: Callable[..., Any], running: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine = await make_engine(schedule_min_interval=1)
    await command(engine, "schedule add every 1 hour catch up")
    await _moved(engine, back=3 * 3600 + 10)  # down for three hours: three runs missed
    _, scheduler = await running(schedule_catchup_seconds=3600)
    runs = await recorded(scheduler, 1, 1)
    assert [(kind, outcome) for _, kind, outcome, _ in runs] == [("catchup", "ok")]
    assert posts(platform) == ["echo: Mia's schedule 1: catch up"]
    assert time.time() - runs[0][0] < 3600  # the newest missed time, not the oldest
    (schedule,) = await scheduler.store.active()
    assert schedule.next_run_at is not None and schedule.next_run_at > time.time()


async def test_a_run_missed_too_long_ago_is_skipped_and_said_once(
    make_engine: Callable[..., Any], running: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine = await make_engine(schedule_min_interval=1)
    hour = (time.gmtime().tm_hour + 12) % 24  # half a day from now: no run falls in the last minute
    await command(engine, f"schedule add every day at {hour}:00 morning digest")
    await _moved(engine, back=2 * 86400)
    _, scheduler = await running(schedule_catchup_seconds=60)
    await until(lambda: posts(platform))
    (note,) = posts(platform)
    assert note.startswith(f"_Parley was offline when schedule 1 (every day at {hour}:00) was due at ")
    assert "too long ago to make up, so that run was skipped. It runs next at " in note
    assert [(k, o) for _, k, o, _ in await scheduler.store.runs(1)] == [("skipped", "skipped")]
    assert llm.chat_requests() == []
    _, restarted = await running(schedule_catchup_seconds=60)  # nothing more is missed, nothing said
    assert len(await restarted.store.runs(1)) == 1 and len(posts(platform)) == 1


async def test_three_failed_runs_in_a_row_pause_the_schedule_with_a_note(
    running: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine, scheduler = await running()
    llm.enqueue(*[Script(status=401) for _ in range(3)])
    await command(engine, "schedule add every 1 hour fails")
    for failed in range(1, 4):  # one at a time, so no run overlaps the next
        await command(engine, "schedule run 1")
        await recorded(scheduler, 1, failed)
    await until(lambda: any("paused" in text for text in posts(platform)))
    assert posts(platform)[-1] == (
        "_Schedule 1 failed 3 times in a row, so it is paused; `/schedule resume 1` starts it again._"
    )
    assert [o for _, _, o, _ in await scheduler.store.runs(1)] == ["error"] * 3
    (listed,) = await scheduler.store.listed(str(CHANNEL))
    assert listed.state == "paused" and scheduler._timer.get_job("1") is None


async def test_to_another_channel_posts_there_only_where_parley_may(
    running: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine, scheduler = await running()
    added = await command(engine, "schedule add every 1 hour --to #digest summarize yesterday in general")
    assert added.startswith("Schedule 1 added: every 1 hour (UTC) in #digest. Next run: ")
    assert ", in #digest, active," in await command(engine, "schedule list")
    (schedule,) = await scheduler.store.active()
    assert schedule.conversation == "test:digest" and schedule.prompt == "summarize yesterday in general"
    assert await command(engine, "schedule add every 1 hour --to #announcements x") == (
        "Parley may not post in #announcements; invite it there (or allow it to send messages), for example "
        "`/schedule add every weekday at 9:00 --to #eng-digest /summarize since yesterday`."
    )
    assert "Parley cannot find the channel #nowhere" in await command(
        engine, "schedule add every 1 hour --to #nowhere x"
    )
    await command(engine, "schedule run 1")
    digest = ConversationKey("test", "digest")
    await until(lambda: posts(platform, digest))
    assert posts(platform, CHANNEL) == []


async def test_every_bad_input_gets_one_sentence_with_an_example(
    running: Callable[..., Any], platform: RecordingPlatform
) -> None:
    engine, _ = await running(schedule_min_interval=900, schedule_max_per_conversation=2)
    refused = {
        "schedule add every 5 minutes x": "'every 5 minutes' would run every 5 minutes; schedules here "
        "run at most every 15 minutes, for example `/schedule add every 15 minutes x`.",
        "schedule add 61 9 * * * x": "is not a valid cron expression",
        "schedule add on 2020-01-01 at 10:00 x": "has already passed; pick a later time",
        "schedule add every day at 9:00": "Say what to do at 'every day at 9:00': for example "
        "`/schedule add every day at 9:00 /summarize since yesterday`.",
        "schedule pause 7": "There is no schedule 7 here; try `/schedule pause 3`",
        "schedule delete first": "/schedule delete needs a schedule's id, for example `/schedule delete 3`",
        "schedule tz Mars/Base": "'Mars/Base' is not a time zone Parley knows; use an IANA name such as "
        "Europe/Berlin, America/New_York or UTC, for example `/schedule tz Europe/Berlin`.",
        "schedule frobnicate": "/schedule has no 'frobnicate'. Use `/schedule add WHEN PROMPT`",
    }
    for line, expected in refused.items():
        answer = await command(engine, line)
        assert expected in answer and "\n" not in answer, line
    assert await command(engine, "schedule add every 1 hour x", ADA) == (
        "Only channel managers and Parley admins can change schedules."
    )
    await command(engine, "schedule add every 1 hour a")
    await command(engine, "schedule add every 2 hours b")
    assert (await command(engine, "schedule add every 3 hours c")).startswith(
        "This conversation already has 2 schedules, the most it may hold; remove one with"
    )


async def test_the_conversations_time_zone_sets_when_schedules_run(running: Callable[..., Any]) -> None:
    engine, scheduler = await running()
    assert await command(engine, "schedule tz") == (
        "Times here are in UTC; `/schedule tz Europe/Berlin` changes that."
    )
    assert await command(engine, "schedule tz Europe/Berlin") == (
        "Times in this channel are now in Europe/Berlin; schedules added from now on use it."
    )
    added = await command(engine, "schedule add every day at 9:00 morning")
    assert "every day at 9:00 (Europe/Berlin). Next run: " in added
    assert added.endswith((" 09:00 CET.", " 09:00 CEST."))  # whichever is in force on the day
    (schedule,) = await scheduler.store.active()
    assert schedule.next_run_at is not None
    assert datetime.fromtimestamp(schedule.next_run_at, ZoneInfo("Europe/Berlin")).hour == 9
    # A thread inherits its channel's zone.
    thread = ConversationKey("test", "general", "t1")
    assert "in Europe/Berlin" in await command(engine, "schedule tz", key=thread)


async def _moved(engine: Engine, back: float) -> None:
    """As if the schedule had been made `back` seconds ago and Parley had been down since."""
    from sqlalchemy import Connection, update

    from bot.schema import schedules

    def move(conn: Connection) -> None:
        row = conn.execute(schedules.select()).mappings().one()
        conn.execute(
            update(schedules).values(anchor=row["anchor"] - back, next_run_at=row["next_run_at"] - back)
        )

    await engine.store.write(move)


async def test_a_digest_summarizes_another_channel_and_posts_where_it_was_sent(
    running: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine, scheduler = await running()
    platform.channel_messages[CHANNEL] = said(12, start=time.time() - 3600)
    added = await command(
        engine, "schedule add every 1 hour --to #digest /summarize since yesterday in #general"
    )
    assert added.startswith("Schedule 1 added: every 1 hour (UTC) in #digest.")
    llm.enqueue(Script(tokens=["The team shipped."]))
    await command(engine, "schedule run 1")
    assert [o for _, _, o, _ in await recorded(scheduler, 1, 1)] == ["ok"]
    assert posts(platform, ConversationKey("test", "digest")) == ["The team shipped."]
    block = str(llm.chat_requests()[0].json["messages"][-1]["content"])
    assert block.count("message number") == 12  # #general, read through the port
    # Reading another channel is for managers (and their schedules), since the asker may not see it.
    assert await ask(engine, "/summarize in #general", ConversationKey("test", "digest")) == (
        "_Only channel managers (and their schedules) can summarize another channel; "
        "`/summarize since yesterday` reads this one._"
    )
    assert await ask(engine, "/summarize in #elsewhere", ConversationKey("test", "digest"), MANAGER) == (
        "_Parley cannot find the channel #elsewhere; try `/summarize since yesterday in #eng`._"
    )


async def test_a_schedule_made_by_another_process_is_picked_up(
    running: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "RESYNC_SECONDS", 0.2)
    first, _ = await running()
    _, other = await running()
    await command(first, "schedule add every 1 hour from the other process")
    await until(lambda: other._timer.get_job("1") is not None)
    await command(first, "schedule delete 1")
    await until(lambda: other._timer.get_job("1") is None)


@pytest.mark.both_databases
async def test_runs_a_killed_process_left_running_are_closed_once_their_messages_are_answered(
    make_engine: Callable[..., Any], running: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    """What a process killed mid-run leaves: runs "running", one with its reply half shown, one with its
    message waiting its turn in the inbox, one killed before its message was stored."""
    crashed = await make_engine(schedule_min_interval=1)
    await command(crashed, "schedule add every 1 hour the digest")
    runs = ScheduleStore(crashed.store)
    author = Author("schedule:1", "Mia's schedule 1")
    cut_at, waiting_at, unsent_at = (time.time() - ago for ago in (30, 20, 10))
    for fire in (cut_at, waiting_at, unsent_at):
        assert await runs.claim(1, fire, "scheduled", instance=crashed.store.instance_id)
    entries = []
    for fire in (cut_at, waiting_at):
        message = Message(CHANNEL, author, "the digest", id=run_message_id(1, fire), created_at=fire)
        entries.append(await crashed.store.accept(message, None, "the digest", 3))
    cut = entries[0]
    assert cut is not None and cut.turn_id is not None
    record = AssistantRecord("Half a digest", "openrouter/xiaomi/mimo-v2-flash", "streaming")
    await crashed.store.start_reply(str(CHANNEL), cut.turn_id, author.id, record, 4, {"surface": 9101})
    await crashed.aclose()

    engine, scheduler = await running(instance_heartbeat_seconds=3600)  # sweeps only when told here
    own_at = time.time()  # a run of this process, under way: left alone
    assert await scheduler.store.claim(1, own_at, "manual", instance=engine.store.instance_id)
    await scheduler.sweep()  # before recovery: only the run that never reached the inbox is closed
    outcomes = [(fire, outcome) for fire, _, outcome, _ in await scheduler.store.runs(1)]
    assert outcomes == [
        (cut_at, "running"),
        (waiting_at, "running"),
        (unsent_at, "interrupted"),
        (own_at, "running"),
    ]

    await engine.recover("test")  # the cut reply repaired, the waiting message answered
    await asyncio.gather(*engine._tasks)
    await scheduler.sweep()
    assert [(outcome, reply) for _, _, outcome, reply in await scheduler.store.runs(1)] == [
        ("interrupted", "Half a digest"),
        ("ok", "echo: Mia's schedule 1: the digest"),
        ("interrupted", None),
        ("running", None),
    ]
    reopened = [(s.id, s.final) for _, _, s in platform.surfaces if s.reopened]
    assert reopened == [(9101, f"Half a digest\n\n_{RESTARTED_NOTE}_")]  # edited, not posted again
    assert len(llm.chat_requests()) == 1  # the cut run is not asked again
    # Only the newest closed run counts towards the pause (older ones would count out of order).
    schedule = await scheduler.store.get(1)
    assert schedule is not None and schedule.failures == 0 and schedule.state == "active"


@pytest.mark.both_databases
async def test_runs_older_than_seven_days_are_forgotten_but_each_schedules_newest(
    make_engine: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine = await make_engine(schedule_min_interval=1)
    for name in ("hourly", "rarely"):
        await command(engine, f"schedule add every 1 hour {name}")
    runs = ScheduleStore(engine.store)
    week_ago = time.time() - KEEP_SECONDS - 60
    for schedule_id, fire, outcome in (
        (1, week_ago - 30, "running"),  # still under way (its instance decides): kept
        (1, week_ago - 20, "ok"),
        (1, week_ago - 10, "error"),
        (1, time.time(), "ok"),
        (2, week_ago, "ok"),  # old, but the newest of its schedule: kept
    ):
        assert await runs.claim(schedule_id, fire, "scheduled", outcome=outcome)
    await Leader(engine).check()
    kept = [(fire, outcome) for fire, _, outcome, _ in await runs.runs(1)]
    assert [outcome for _, outcome in kept] == ["running", "ok"]
    assert [outcome for _, _, outcome, _ in await runs.runs(2)] == ["ok"]
