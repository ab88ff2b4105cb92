"""Schedules end to end through the real discord.py and Bolt clients and their loopbacks: made with the
platform's own command, fired by the scheduler, posted as Parley's own message in the conversation or
a `--to` channel, never answered as an incoming message; paused, and restored after a restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.engine import Engine
from bot.scheduler import Scheduler
from skills import builtin
from tests.support.discord_emulator import (
    GENERAL,
    RANDOM,
    ROOMS,
    SEND_MESSAGES,
    DiscordEmulator,
    overwrite,
    running,
    until,
)
from tests.support.discord_emulator import GUILD_ID as EVERYONE
from tests.support.discord_harness import discord_settings_for
from tests.support.llm_server import LLMServer
from tests.support.search_server import SearchServer
from tests.support.slack_api import SlackUser
from tests.support.slack_harness import ADMIN, ALICE, emulator, serving, settings_builder
from tests.support.slack_harness import until as slack_until


def option(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "type": 3, "value": value}


@contextlib.asynccontextmanager
async def parley_on_discord(discord_api: DiscordEmulator, settings: Settings) -> AsyncIterator[Scheduler]:
    """Parley as `parley run` starts it: the platform, recovery, then the scheduler; stopped in turn."""
    engine = await Engine.create(settings, skills=builtin(settings))
    scheduler = Scheduler(engine)
    try:
        async with running(discord_api, engine):
            await scheduler.start()
            yield scheduler
            await engine.drain(1)
            await scheduler.stop()
    finally:
        await engine.aclose()


@pytest.fixture
def discord_settings(discord_api: DiscordEmulator, make_settings: Callable[..., Settings]) -> Settings:
    return discord_settings_for(make_settings, discord_api, schedule_min_interval=1)


async def finished(scheduler: Scheduler, schedule_id: int) -> list[tuple[Any, ...]]:
    """A schedule's runs, once none is still under way."""
    async with asyncio.timeout(20):
        while True:
            runs = await scheduler.store.runs(schedule_id)
            if all(outcome != "running" for _, _, outcome, _ in runs):
                return runs
            await asyncio.sleep(0.02)


def posted(discord_api: DiscordEmulator, channel: int, text: str) -> list[dict[str, Any]]:
    """Parley's own posts (not replies to anyone) in a channel with this text."""
    return [
        m
        for m in discord_api.messages_in(channel)
        if m["content"] == text and not m.get("message_reference") and not m["flags"]
    ]


async def test_discord_schedule_posts_in_its_channel_and_in_a_to_channel_then_pauses(
    discord_api: DiscordEmulator, discord_settings: Settings, llm: LLMServer
) -> None:
    async with parley_on_discord(discord_api, discord_settings) as scheduler:
        here = await discord_api.interact(
            "schedule", [option("action", "add"), option("details", "every 2 seconds ping")], manager=True
        )
        await until(lambda: discord_api.original_response(here))
        added = discord_api.original_response(here)
        assert added is not None and added["content"].startswith("Schedule 1 added: every 2 seconds (UTC).")
        there = await discord_api.interact(
            "schedule",
            [option("action", "add"), option("details", f"every 1 hour --to <#{RANDOM}> the digest")],
            manager=True,
        )
        await until(lambda: discord_api.original_response(there))
        assert f"in <#{RANDOM}>" in discord_api.original_response(there)["content"]  # type: ignore[index]
        await until(lambda: len(posted(discord_api, GENERAL, "echo: Alice's schedule 1: ping")) >= 2)
        run = await discord_api.interact(
            "schedule", [option("action", "run"), option("details", "2")], manager=True
        )
        await until(lambda: posted(discord_api, RANDOM, "echo: Alice's schedule 2: the digest"))
        assert discord_api.original_response(run)["content"] == "Schedule 2 is running now."  # type: ignore[index]
        pause = await discord_api.interact(
            "schedule", [option("action", "pause"), option("details", "1")], manager=True
        )
        await until(lambda: discord_api.original_response(pause))
        assert scheduler._timer.get_job("1") is None
        # Scheduled posts are Parley's own messages: none was taken for a message to answer.
        runs = await finished(scheduler, 1) + await finished(scheduler, 2)
        assert len(llm.chat_requests()) == len(runs)
        # Where Parley may not send messages, --to is refused in one sentence.
        await discord_api.set_overwrites(ROOMS[1], [overwrite(EVERYONE, deny=SEND_MESSAGES)])
        refused = await discord_api.interact(
            "schedule",
            [option("action", "add"), option("details", "every 1 hour --to #room-1 x")],
            manager=True,
        )
        await until(lambda: discord_api.original_response(refused))
        assert discord_api.original_response(refused)["content"].startswith(  # type: ignore[index]
            "Parley may not post in #room-1; invite it there (or allow it to send messages)"
        )
        nobody = await discord_api.interact(
            "schedule", [option("action", "add"), option("details", "every 1 hour x")]
        )
        await until(lambda: discord_api.original_response(nobody))
        assert discord_api.original_response(nobody)["content"] == (  # type: ignore[index]
            "Only channel managers and Parley admins can change schedules."
        )


async def test_discord_schedules_are_restored_after_a_restart(
    discord_api: DiscordEmulator, discord_settings: Settings, llm: LLMServer
) -> None:
    async with parley_on_discord(discord_api, discord_settings):
        asked = await discord_api.interact(
            "schedule",
            [option("action", "add"), option("details", "every 2 seconds after restart")],
            manager=True,
        )
        await until(lambda: discord_api.original_response(asked))
    before = len(posted(discord_api, GENERAL, "echo: Alice's schedule 1: after restart"))
    async with parley_on_discord(discord_api, discord_settings) as scheduler:
        assert scheduler._timer.get_job("1") is not None
        await until(
            lambda: len(posted(discord_api, GENERAL, "echo: Alice's schedule 1: after restart")) > before
        )


@pytest.fixture
async def slack_parley(
    llm: LLMServer, make_settings: Callable[..., Settings], search: SearchServer
) -> AsyncIterator[Any]:
    async with emulator() as slack:
        slack.users[ADMIN.id] = SlackUser(ADMIN.id, ADMIN.name, is_admin=True, tz="America/New_York")
        slack.channel_names.update({"C1": "general", "C2": "digest", "C3": "secret"})
        slack.joined = {"C1", "C2"}
        settings = settings_builder(make_settings, slack, search)(schedule_min_interval=1)
        async with serving(slack, llm, settings) as harness:
            scheduler = Scheduler(harness.engine)
            await scheduler.start()
            yield harness, scheduler
            await harness.engine.drain(1)
            await scheduler.stop()


async def test_slack_schedule_in_the_creators_zone_posts_in_a_to_channel(
    slack_parley: Any, llm: LLMServer
) -> None:
    harness, _ = slack_parley
    slack = harness.slack
    await harness.command("schedule add every day at 9:00 --to #digest morning digest", user=ADMIN.id)
    await slack_until(lambda: slack.responses, "the answer")
    answer = slack.responses[-1]
    assert answer["response_type"] == "in_channel"
    assert answer["text"].startswith("Schedule 1 added: every day at 9:00 (America/New_York) in #digest.")
    assert answer["text"].endswith((" 09:00 EST.", " 09:00 EDT."))  # users.info's tz: the creator's
    await harness.command("schedule run 1", user=ADMIN.id)
    await slack_until(
        lambda: any(m.text == "echo: Ada's schedule 1: morning digest" for m in slack.replies("C2")),
        "the run posted in #digest",
    )
    assert slack.replies("C1") == []  # nothing in the channel it was made in
    await harness.command("schedule add every 1 hour --to <#C3|secret> x", user=ADMIN.id)
    await slack_until(lambda: len(slack.responses) >= 3, "the refusal")
    assert slack.responses[-1]["text"].startswith(
        "Parley may not post in &lt;#C3|secret&gt;; invite it there"
    )
    await harness.command("schedule add every 1 hour --to #nowhere x", user=ADMIN.id)
    await slack_until(lambda: len(slack.responses) >= 4, "the second refusal")
    assert slack.responses[-1]["text"].startswith("Parley cannot find the channel #nowhere")
    await harness.command("schedule pause 1", user=ALICE.id)
    await slack_until(lambda: len(slack.responses) >= 5, "the third refusal")
    assert slack.responses[-1]["text"] == "Only channel managers and Parley admins can change schedules."


async def test_slack_schedule_fires_in_its_channel(slack_parley: Any, llm: LLMServer) -> None:
    harness, _ = slack_parley
    await harness.command("schedule tz Europe/Berlin", user=ADMIN.id)
    await harness.command("schedule add every 2 seconds status please", user=ADMIN.id)
    await slack_until(lambda: len(harness.slack.responses) >= 2, "the answers")
    assert "every 2 seconds (Europe/Berlin)" in harness.slack.responses[-1]["text"]
    await slack_until(
        lambda: (
            sum(m.text == "echo: Ada's schedule 1: status please" for m in harness.slack.replies("C1")) >= 2
        ),
        "two runs posted",
    )
    assert all(m.thread_ts is None for m in harness.slack.replies("C1"))  # posts of its own, not replies


async def test_slack_finds_a_channel_by_name_past_the_first_page_of_conversations_list(
    slack_parley: Any, llm: LLMServer
) -> None:
    harness, _ = slack_parley
    slack = harness.slack
    slack.channel_names.update({f"C9{n:03d}": f"room-{n:03d}" for n in range(450)})
    assert slack.joined is not None
    slack.joined.add("C9449")
    await harness.command("schedule add every 1 hour --to #room-449 x", user=ADMIN.id)
    await slack_until(lambda: slack.responses, "the answer")
    assert slack.responses[-1]["text"].startswith(
        "Schedule 1 added: every 1 hour (America/New_York) in #room-449."
    )
    pages = slack.calls_to("conversations.list")
    assert len(pages) == 3 and all(int(call.args["limit"]) <= 200 for call in pages)
    assert all(call.args["types"] == "public_channel,private_channel" for call in pages)


async def test_slack_schedule_typed_in_a_mention_takes_the_creators_zone_too(slack_parley: Any) -> None:
    harness, scheduler = slack_parley
    await harness.mention("/schedule add every day at 7:00 early news", user=ADMIN.id)
    await slack_until(
        lambda: any("Schedule 1 added" in m.text for m in harness.slack.replies("C1")), "answer"
    )
    (schedule,) = await scheduler.store.active()
    assert schedule.when.timezone == "America/New_York" and schedule.when.text == "every day at 7:00"


async def test_the_slack_loopback_refuses_channel_calls_as_slack_does() -> None:
    async with emulator() as slack:
        slack.scopes = {"channels:read", "chat:write", "users:read"}  # no groups:read
        slack.channel_names.update({"C1": "general", "G1": "private"})
        slack.joined = {"C1"}
        slack.users["UTZ"] = SlackUser("UTZ", "Zoe", tz="Asia/Tokyo")
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
        for arguments, error in (
            ({"limit": 0}, "invalid_limit"),
            ({"limit": 1001}, "invalid_limit"),
            ({"types": "public_channel,bogus"}, "invalid_types"),
            ({"types": "private_channel"}, "missing_scope"),
            ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ):
            with pytest.raises(SlackApiError) as refused:
                await client.conversations_list(**arguments)
            assert refused.value.response["error"] == error, arguments
        listed = await client.conversations_list()
        assert [c["name"] for c in listed["channels"]] == ["general"]  # public channels by default
        info = await client.conversations_info(channel="C2")
        assert info["channel"]["is_member"] is False
        with pytest.raises(SlackApiError) as refused:
            await client.chat_postMessage(channel="C2", text="hello")
        assert refused.value.response["error"] == "not_in_channel"
        assert (await client.chat_postMessage(channel="D1", text="hi"))["ok"]  # a DM needs no joining
        user = (await client.users_info(user="UTZ"))["user"]
        assert (user["tz"], user["tz_offset"]) == ("Asia/Tokyo", 9 * 3600)
