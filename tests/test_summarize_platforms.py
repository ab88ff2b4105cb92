"""/summarize over 300+ messages through the real discord.py and Bolt clients and their loopbacks: read
back page by page, summarized in parts, with links that lead to messages the platform has."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.config import Settings
from bot.engine import Engine
from skills import builtin
from tests.support.console import USER, chat
from tests.support.discord_emulator import (
    ALICE,
    BOB,
    BOT_ID,
    GENERAL,
    GUILD_ID,
    THREAD,
    DiscordEmulator,
    running,
    until,
)
from tests.support.discord_harness import discord_settings_for, engine_on
from tests.support.llm_server import LLMServer, Script
from tests.support.search_server import SearchServer
from tests.support.slack_harness import ALICE as SLACK_ALICE
from tests.support.slack_harness import BOB as SLACK_BOB
from tests.support.slack_harness import Harness, emulator, serving, settings_builder

NOTES = [Script(tokens=["Notes."]) for _ in range(40)]  # each part's notes, then the summary itself


def user_blocks(llm: LLMServer) -> list[str]:
    return [str(m["content"]) for r in llm.chat_requests() for m in r.json["messages"] if m["role"] == "user"]


@pytest.fixture
async def discord_bot(
    discord_api: DiscordEmulator, make_settings: Callable[..., Settings], llm: LLMServer
) -> AsyncIterator[Engine]:
    """conftest's `discord_bot` with a small model window, set before the engine reads the model list."""
    llm.models[0]["context_length"] = 6000  # a few hundred messages take several parts
    settings = discord_settings_for(make_settings, discord_api)
    async with engine_on(settings, builtin(settings)) as engine, running(discord_api, engine):
        yield engine


async def test_discord_summarize_reads_330_messages_in_parts_with_links_to_them(
    discord_bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["Noted, Alice."], usage=None))  # no usage: nothing to calibrate from
    asked = await discord_api.send_message(
        GENERAL, f"<@{BOT_ID}> remember the launch", mentions=[{"id": str(BOT_ID), "username": "parley"}]
    )
    await until(lambda: any(m["content"] == "Noted, Alice." for m in discord_api.messages_in(GENERAL)))
    for n in range(330):
        await discord_api.send_message(GENERAL, f"launch note {n}", author=(ALICE, BOB)[n % 2])
    llm.enqueue(*NOTES)
    interaction = await discord_api.interact("summarize", [{"name": "range", "type": 3, "value": "332"}])

    def shown() -> str:
        return str((discord_api.original_response(interaction) or {}).get("content") or "")

    await until(lambda: shown().endswith("done.\n\nNotes."), seconds=30)
    parts = len(llm.chat_requests()) - 2  # less the first reply and the combining request
    assert parts > 2 and shown().startswith(f"Summarizing 332 messages in {parts} parts: 1 2 ")
    read = "\n".join(user_blocks(llm)[1 : 1 + parts])
    assert all(f"launch note {n} " in read for n in range(330))
    assert "Alice: " in read and "Bob: " in read and "Parley (Parley): Noted, Alice." in read
    assert f"/{asked}>" in read  # the question itself, linked
    links = re.findall(rf"https://discord.com/channels/{GUILD_ID}/{GENERAL}/(\d+)", read)
    assert len(links) == 332 and all(link in discord_api.state.messages for link in links)
    # History was read as Discord serves it: a page of at most 100 at a time, back from the newest.
    pages = [c for c in discord_api.calls if c.method == "GET" and c.path.endswith(f"{GENERAL}/messages")]
    assert len(pages) >= 4 and all(int(c.query["limit"]) <= 100 for c in pages)


@pytest.fixture
async def harness(
    llm: LLMServer, make_settings: Callable[..., Settings], search: SearchServer
) -> AsyncIterator[Harness]:
    llm.models[0]["context_length"] = 6000
    async with (
        emulator() as slack,
        serving(slack, llm, settings_builder(make_settings, slack, search)()) as on,
    ):
        yield on


async def test_slack_summarize_reads_320_messages_in_parts_with_links_to_them(
    harness: Harness, llm: LLMServer
) -> None:
    said = [
        harness.slack.say((SLACK_ALICE, SLACK_BOB)[n % 2].id, "C1", f"launch note {n}") for n in range(320)
    ]
    llm.enqueue(*NOTES)
    assert await harness.command("summarize 320", user=SLACK_ALICE.id) == 200
    await harness.finished_streams(1)
    header, answer = harness.slack.replies("C1")
    assert header.text == "*Alice* asked with `/parley summarize`: 320"
    assert answer.thread_ts == header.ts and answer.text.endswith("done.\n\nNotes.")
    parts = len(llm.chat_requests()) - 1
    assert parts > 2 and answer.text.startswith("Summarizing 320 messages in ")
    read = "\n".join(user_blocks(llm)[:parts])
    assert all(f"launch note {n} " in read for n in range(1, 320))  # the newest 320 with the header
    assert "Alice: " in read and "Bob: " in read
    links = re.findall(r"https://loopback.slack.test/archives/C1/p(\d+)", read)
    kept = {m.ts.replace(".", "") for m in harness.slack.messages.values()}
    assert len(links) == 320 and set(links) <= kept
    assert said[-1].ts.replace(".", "") in links
    # conversations.history was paged by cursor, as Slack pages it.
    assert len(harness.slack.calls_to("conversations.history")) >= 2


async def test_terminal_summarize_reads_the_stored_conversation(llm: LLMServer, tmp_path: Path) -> None:
    code, out, err = await chat(llm, tmp_path, b"My name is Ada.\nWe ship on Friday.\n/summarize\n")
    assert code == 0, err
    summary = out.split("\n")[2:]  # the loopback model echoes what it was given
    block = "\n".join(summary)
    assert f"] {USER}: My name is Ada." in block
    assert "Parley (Parley): echo: " in block and "We ship on Friday." in block
    assert "Lines marked (Parley)" in llm.chat_requests()[-1].json["messages"][0]["content"]


async def test_discord_summarize_in_a_thread_reads_the_thread(
    discord_bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    await discord_api.send_message(GENERAL, "in the channel, not the thread")
    for n in range(3):
        await discord_api.send_message(THREAD, f"thread note {n}", author=BOB)
    llm.enqueue(Script(tokens=["Bob wrote three notes."]))
    asked = await discord_api.interact("summarize", [], channel=THREAD)
    await until(
        lambda: (discord_api.original_response(asked) or {}).get("content") == "Bob wrote three notes."
    )
    (block,) = user_blocks(llm)
    assert block.count("thread note") == 3 and "in the channel" not in block
    assert f"https://discord.com/channels/{GUILD_ID}/{THREAD}/" in block


async def test_slack_summarize_in_a_thread_reads_the_thread(harness: Harness, llm: LLMServer) -> None:
    harness.slack.say(SLACK_BOB.id, "C1", "in the channel, not the thread")
    parent = harness.slack.say(SLACK_ALICE.id, "C1", "release plan?")
    for n in range(3):
        harness.slack.say(SLACK_BOB.id, "C1", f"thread note {n}", thread_ts=parent.ts)
    llm.enqueue(Script(tokens=["Bob answered Alice."]))
    await harness.mention("/summarize", ts=None, thread_ts=parent.ts)
    await harness.finished_streams(1)
    (block,) = user_blocks(llm)
    assert "Alice: release plan?" in block and block.count("thread note") == 3
    assert "in the channel" not in block
    assert f"archives/C1/p{parent.ts.replace('.', '')}" in block
    (answer,) = harness.slack.replies("C1")
    assert answer.thread_ts == parent.ts and answer.text == "Bob answered Alice."
