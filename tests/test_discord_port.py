"""Discord through the platform port: one answer per delivery, history with paging and permalinks, replies
nobody asked for, and replies reopened after a restart. The real discord.py client against the loopback
Discord, answering through the real engine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import adapters.discord.surface as surfaces
from adapters.discord.port import DiscordPlatform
from adapters.discord.text import split_reply
from bot.config import Settings
from bot.engine import RESTARTED_NOTE, Engine
from bot.models import ConversationKey
from bot.platform import HistoryUnavailable
from bot.reply import extend
from skills import builtin
from tests.support.discord_emulator import (
    ALICE,
    BOB,
    BOT_ID,
    DM_CHANNEL,
    GENERAL,
    GUILD_ID,
    RANDOM,
    THREAD,
    DiscordEmulator,
    overwrite,
    running,
    until,
)
from tests.support.discord_harness import discord_settings_for, engine_on
from tests.support.llm_server import LLMServer, Script

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}
READ_MESSAGE_HISTORY = 1 << 16
VIEW_CHANNEL = 1 << 10
IN_GENERAL = ConversationKey("discord", str(GENERAL))
IN_THREAD = ConversationKey("discord", str(GENERAL), str(THREAD))


@pytest.fixture
def settings_ignoring_dms(discord_api: DiscordEmulator, make_settings: Callable[..., Settings]) -> Settings:
    """The loopback Discord's settings, but DMs here are chatter for history, not questions."""
    return discord_settings_for(make_settings, discord_api, discord_reply_in_dms=False)


@pytest.fixture
async def engine_ignoring_dms(settings_ignoring_dms: Settings) -> AsyncIterator[Engine]:
    async with engine_on(settings_ignoring_dms, builtin(settings_ignoring_dms)) as engine:
        yield engine


@pytest.fixture
async def discord(
    discord_api: DiscordEmulator, engine_ignoring_dms: Engine
) -> AsyncIterator[DiscordPlatform]:
    async with running(discord_api, engine_ignoring_dms) as platform:
        yield platform


def contents(discord_api: DiscordEmulator, channel: int) -> list[str]:
    return [m["content"] for m in discord_api.messages_in(channel)]


def history_calls(discord_api: DiscordEmulator, channel: int) -> list[dict[str, str]]:
    path = f"/api/v10/channels/{channel}/messages"
    return [c.query for c in discord_api.calls if c.method == "GET" and c.path == path]


# One answer per delivery


async def test_a_message_delivered_twice_is_answered_once(
    discord: DiscordPlatform,
    discord_api: DiscordEmulator,
    llm: LLMServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.engine")
    llm.enqueue(Script(tokens=["Once", " only."], delay=0.3))
    sent = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> hello", mentions=[MENTION])
    await discord_api.deliver_again(sent)  # a resume replays it while the reply streams
    await until(lambda: f"message {sent} was delivered again" in caplog.text)
    await until(lambda: contents(discord_api, GENERAL) == ["Once only."])
    await discord_api.deliver_again(sent)  # and once more after the reply is done
    await until(lambda: caplog.text.count(f"message {sent} was delivered again") == 2)
    assert len(discord_api.replies_to(sent)) == 1 and len(llm.chat_requests()) == 1


async def test_a_redelivery_after_a_restart_is_not_answered_again(
    discord_api: DiscordEmulator,
    engine_ignoring_dms: Engine,
    settings_ignoring_dms: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.engine")
    async with running(discord_api, engine_ignoring_dms):
        sent = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> hello", mentions=[MENTION])
        await until(lambda: contents(discord_api, GENERAL) == ["echo: Alice: hello"])
    restarted = await Engine.create(settings_ignoring_dms, skills=builtin(settings_ignoring_dms))
    try:
        async with running(discord_api, restarted):
            await discord_api.deliver_again(sent)
            await until(lambda: f"message {sent} was delivered again" in caplog.text)
    finally:
        await restarted.aclose()
    assert contents(discord_api, GENERAL) == ["echo: Alice: hello"]


# History


async def test_history_pages_through_a_long_channel_oldest_first_with_names_and_permalinks(
    discord: DiscordPlatform, discord_api: DiscordEmulator
) -> None:
    ids = []
    for n in range(250):
        ids.append(await discord_api.send_message(GENERAL, f"note {n}", author=BOB if n % 2 else ALICE))
    everything = await discord.history(IN_GENERAL, limit=300)
    assert [entry.id for entry in everything] == ids
    assert [entry.text for entry in everything[:3]] == ["note 0", "note 1", "note 2"]
    assert [entry.author_name for entry in everything[:2]] == ["Alice", "Bob"]
    assert not any(entry.by_parley for entry in everything)
    assert everything[7].permalink == f"https://discord.com/channels/{GUILD_ID}/{GENERAL}/{ids[7]}"
    assert all(everything[i].created_at <= everything[i + 1].created_at for i in range(249))
    # Discord gives at most 100 a page: three pages, each read back from the one before.
    pages = history_calls(discord_api, GENERAL)
    assert [page["limit"] for page in pages] == ["100", "100", "100"]
    assert "before" not in pages[0] and pages[1]["before"] == ids[150] and pages[2]["before"] == ids[50]

    newest = await discord.history(IN_GENERAL, limit=120)
    assert [entry.id for entry in newest] == ids[130:]
    before = await discord.history(IN_GENERAL, limit=30, before=ids[100])
    assert [entry.id for entry in before] == ids[70:100]
    after = await discord.history(IN_GENERAL, limit=130, after=ids[100])
    assert [entry.id for entry in after] == ids[101:231]
    between = await discord.history(IN_GENERAL, limit=100, before=ids[20], after=ids[9])
    assert [entry.id for entry in between] == ids[10:20]


async def test_history_of_a_thread_and_a_dm_includes_parleys_replies(
    discord: DiscordPlatform, discord_api: DiscordEmulator
) -> None:
    await discord_api.send_message(THREAD, "in the thread", author=BOB)
    asked = await discord_api.send_message(THREAD, f"<@{BOT_ID}> and you?", mentions=[MENTION])
    await until(lambda: contents(discord_api, THREAD) == ["echo: Alice: and you?"])
    await discord_api.send_message(GENERAL, "not in the thread")
    entries = await discord.history(IN_THREAD, limit=10)
    assert [(e.author_name, e.text, e.by_parley) for e in entries] == [
        ("Bob", "in the thread", False),
        ("Alice", "@Parley and you?", False),
        ("Parley", "echo: Alice: and you?", True),
    ]
    assert entries[1].id == asked
    assert entries[2].permalink.startswith(f"https://discord.com/channels/{GUILD_ID}/{THREAD}/")
    direct = await discord_api.send_message(DM_CHANNEL, "a private note", guild=False)
    in_dm = ConversationKey("discord", str(DM_CHANNEL))
    assert [e.text for e in await discord.history(in_dm, limit=5)] == ["a private note"]
    assert await discord.permalink(in_dm, direct) == f"https://discord.com/channels/@me/{DM_CHANNEL}/{direct}"
    assert await discord.permalink(IN_THREAD, asked) == (
        f"https://discord.com/channels/{GUILD_ID}/{THREAD}/{asked}"
    )


async def test_history_leaves_out_system_messages_and_shows_attachments(
    discord: DiscordPlatform, discord_api: DiscordEmulator
) -> None:
    await discord_api.send_message(RANDOM, "", message_type=7)  # someone joined
    files = [discord_api.attachment("plan.pdf", b"%PDF-1.7", "application/pdf")]
    await discord_api.send_message(RANDOM, "the plan", attachments=files)
    await discord_api.send_message(RANDOM, "", attachments=files)
    entries = await discord.history(ConversationKey("discord", str(RANDOM)), limit=10)
    assert [e.text for e in entries] == ["the plan [attached: plan.pdf]", "[attached: plan.pdf]"]


async def test_the_model_reads_the_channel_through_the_port_in_a_real_reply(
    discord: DiscordPlatform, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    decided = await discord_api.send_message(GENERAL, "Let's ship on Friday.", author=BOB)
    await discord_api.send_message(GENERAL, "Agreed, Friday.")
    llm.enqueue(
        Script(tokens=[], tool_calls=[("channel_history", '{"limit": 20}')]),
        Script(tokens=["You decided to ship on Friday."]),
    )
    await discord_api.send_message(GENERAL, f"<@{BOT_ID}> what did we decide?", mentions=[MENTION])
    await until(lambda: contents(discord_api, GENERAL) == ["You decided to ship on Friday."])
    block = llm.chat_requests()[-1].json["messages"][-1]["content"]
    link = f"https://discord.com/channels/{GUILD_ID}/{GENERAL}/{decided}"
    assert f"Bob: Let's ship on Friday. <{link}>" in block
    assert "Alice: Agreed, Friday." in block and "Alice: @Parley what did we decide?" in block
    assert history_calls(discord_api, GENERAL) == [{"limit": "20"}]


async def test_without_read_message_history_the_channel_reads_as_empty(
    discord: DiscordPlatform, discord_api: DiscordEmulator
) -> None:
    await discord_api.send_message(RANDOM, "hidden from Parley")
    await discord_api.set_overwrites(RANDOM, [overwrite(BOT_ID, deny=READ_MESSAGE_HISTORY, member=True)])
    assert await discord.history(ConversationKey("discord", str(RANDOM)), limit=10) == []


async def test_a_channel_parley_cannot_see_is_refused_in_one_sentence(
    discord: DiscordPlatform, discord_api: DiscordEmulator
) -> None:
    await discord_api.set_overwrites(RANDOM, [overwrite(BOT_ID, deny=VIEW_CHANNEL, member=True)])
    with pytest.raises(HistoryUnavailable, match=r"Discord refused the messages of discord:\d+ \(403: "):
        await discord.history(ConversationKey("discord", str(RANDOM)), limit=10)


# Replies nobody asked for, and replies reopened


async def test_a_reply_with_no_incoming_event_posts_in_the_conversation(
    discord: DiscordPlatform, discord_api: DiscordEmulator, engine_ignoring_dms: Engine
) -> None:
    surface = await discord.surface_for(IN_THREAD)
    renderer = engine_ignoring_dms.pacer.renderer(surface)
    await surface.start()
    renderer.update("Good morning")
    await renderer.finish("Good morning, everyone.")
    (posted,) = discord_api.messages_in(THREAD)
    assert posted["content"] == "Good morning, everyone." and "message_reference" not in posted
    assert surface.refs == {"channel": str(THREAD), "messages": [posted["id"]]}
    assert discord_api.messages_in(GENERAL) == []


async def test_a_final_says_beforehand_how_many_requests_it_makes(
    discord: DiscordPlatform, discord_api: DiscordEmulator, engine_ignoring_dms: Engine
) -> None:
    """The pacer waits for as many of the channel's slots as the final will use: one per message it
    sends, edits or deletes, not one for the whole reply."""
    long = "\n\n".join(f"Paragraph {n}. " + "word " * 120 for n in range(7))  # three messages
    surface = await discord.surface_for(IN_THREAD)
    assert isinstance(surface, surfaces.MessageSurface)
    channel = surface.budget.cost(final=True)
    await engine_ignoring_dms.pacer.renderer(surface).finish(long[:1000])
    assert surface.final_cost(long[:1000]) == ()  # it shows that already
    assert surface.final_cost(long) == channel * 3  # the first edited, two sent
    await engine_ignoring_dms.pacer.renderer(surface).finish(long)
    assert len(discord_api.writes(THREAD)) == 1 + 3
    reopened = await discord.reopen(IN_THREAD, surface.refs or {})
    assert isinstance(reopened, surfaces.MessageSurface)
    assert reopened.final_cost(long[:3000]) == channel * 3  # two rewritten, one deleted
    await engine_ignoring_dms.pacer.renderer(reopened).finish(long[:3000])
    assert len(discord_api.writes(THREAD)) == 1 + 3 + 2
    assert len([c for c in discord_api.calls if c.method == "DELETE" and c.status < 300]) == 1


async def test_reopen_replaces_what_every_message_of_the_reply_shows(
    discord_api: DiscordEmulator, engine_ignoring_dms: Engine, settings_ignoring_dms: Settings
) -> None:
    long = "\n\n".join(f"Paragraph {n}. " + "word " * 120 for n in range(7))  # about 4,500 characters
    async with running(discord_api, engine_ignoring_dms) as first:
        asked = await discord_api.send_message(GENERAL, "a message the reply answers")
        surface = await first.surface_for(IN_GENERAL, {"channel": str(GENERAL), "message": asked})
        await engine_ignoring_dms.pacer.renderer(surface).finish(long)
        refs = surface.refs
    assert refs is not None and len(refs["messages"]) == len(split_reply(long)) == 3
    restarted = await Engine.create(settings_ignoring_dms, skills=builtin(settings_ignoring_dms))
    try:
        async with running(discord_api, restarted) as second:
            # What was stored is shorter than what was shown: two messages are enough for it now.
            stored = long[:3000]
            reopened = await second.reopen(IN_GENERAL, refs)
            await restarted.pacer.renderer(reopened).finish(extend(stored, RESTARTED_NOTE))
            assert contents(discord_api, GENERAL) == split_reply(extend(stored, RESTARTED_NOTE))
            assert len(contents(discord_api, GENERAL)) == 2
            assert str(discord_api.messages_in(GENERAL)[0]["message_reference"]["message_id"]) == asked
            # A final text longer than the messages it has continues in new ones.
            again = await second.reopen(IN_GENERAL, reopened.refs or {})
            await restarted.pacer.renderer(again).finish(extend(long, RESTARTED_NOTE))
            assert contents(discord_api, GENERAL) == split_reply(extend(long, RESTARTED_NOTE))
    finally:
        await restarted.aclose()
    deletes = [c for c in discord_api.calls if c.method == "DELETE"]
    assert [c.status for c in deletes] == [204]


async def test_an_ask_reply_is_reopened_through_the_channel_after_its_token_expired(
    discord_api: DiscordEmulator, engine_ignoring_dms: Engine, settings_ignoring_dms: Settings, llm: LLMServer
) -> None:
    async with running(discord_api, engine_ignoring_dms):
        asked = await discord_api.interact("ask", [{"name": "prompt", "type": 3, "value": "hi"}])
        await until(lambda: (discord_api.original_response(asked) or {}).get("content") == "echo: Alice: hi")
    original = discord_api.original_response(asked)
    assert original is not None
    discord_api.token_seconds = 0.0  # long gone by the time Parley is back
    restarted = await Engine.create(settings_ignoring_dms, skills=builtin(settings_ignoring_dms))
    try:
        async with running(discord_api, restarted) as second:
            refs: dict[str, Any] = {"channel": str(GENERAL), "messages": [original["id"]]}
            reopened = await second.reopen(IN_GENERAL, refs)
            await restarted.pacer.renderer(reopened).finish(extend("echo: Alice: hi", RESTARTED_NOTE))
    finally:
        await restarted.aclose()
    assert original["content"] == f"echo: Alice: hi\n\n_{RESTARTED_NOTE}_"
    edit = discord_api.calls[-1]
    assert (edit.method, edit.path, edit.status) == (
        "PATCH",
        f"/api/v10/channels/{GENERAL}/messages/{original['id']}",
        200,
    )


# An /ask that waited its turn when Parley stopped


async def ask_then_restart(
    discord_api: DiscordEmulator, settings: Settings, llm: LLMServer, answer: Script
) -> tuple[str, Engine]:
    """Alice's /ask waits behind her mention's reply when Parley stops; returns it and the engine started
    again on the same database, which answers it (the caller closes that engine)."""
    first = await Engine.create(settings, skills=builtin(settings))
    llm.enqueue(Script(tokens=["Halfway"], stall_after=1), answer)
    async with running(discord_api, first):
        mention = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> first", mentions=[MENTION])
        await until(lambda: contents(discord_api, GENERAL) == ["Halfway"])
        asked = await discord_api.interact("ask", [{"name": "prompt", "type": 3, "value": "then me"}])
        await until(
            lambda: len([c for c in discord_api.interaction_responses(asked) if c.status == 200]) == 1
        )
    await first.aclose()
    assert [m["content"] for m in discord_api.replies_to(mention)] == [
        "Halfway\n\n_Cut off: Parley is restarting._"
    ]
    assert discord_api.original_response(asked)["content"] == ""  # type: ignore[index]  # still thinking
    return asked, await Engine.create(settings, skills=builtin(settings))


def token_writes(discord_api: DiscordEmulator, interaction: str) -> list[Any]:
    return [c for c in discord_api.calls if "/webhooks/" in c.path and f"token-{interaction}" in c.path]


async def test_an_ask_waiting_when_parley_stopped_is_answered_through_its_token_after_the_restart(
    discord_api: DiscordEmulator, make_settings: Callable[..., Settings], llm: LLMServer
) -> None:
    settings = discord_settings_for(make_settings, discord_api, shutdown_grace_seconds=0.3)
    asked, restarted = await ask_then_restart(discord_api, settings, llm, Script(tokens=["Now", " you."]))
    try:
        async with running(discord_api, restarted):
            await until(lambda: (discord_api.original_response(asked) or {}).get("content") == "Now you.")
    finally:
        await restarted.aclose()
    writes = token_writes(discord_api, asked)
    assert writes and all(c.path.endswith("/messages/@original") and c.status == 200 for c in writes)


async def test_a_recovered_ask_still_moves_to_the_channel_before_its_token_expires(
    make_settings: Callable[..., Settings], llm: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(surfaces, "TOKEN_SECONDS", 6.0)
    monkeypatch.setattr(surfaces, "TOKEN_MARGIN", 2.0)
    lines = [f"Line {i} of a long answer.\n" for i in range(16)]
    async with DiscordEmulator(token_seconds=6.0) as discord_api:
        settings = discord_settings_for(make_settings, discord_api, shutdown_grace_seconds=0.3)
        asked, restarted = await ask_then_restart(
            discord_api, settings, llm, Script(tokens=lines, delay=0.4)
        )  # about 6 s: past the token's life

        def continued() -> str:
            posts = [m for m in discord_api.messages_in(GENERAL) if m.get("message_reference")]
            return str(posts[-1]["content"]) if len(posts) == 2 else ""

        try:
            async with running(discord_api, restarted):
                await until(lambda: continued().endswith("Line 15 of a long answer.\n"), seconds=30)
        finally:
            await restarted.aclose()
        original = discord_api.original_response(asked)
        assert original is not None
        reference = [m for m in discord_api.messages_in(GENERAL) if m.get("message_reference")][-1]
        assert str(reference["message_reference"]["message_id"]) == original["id"]
        assert original["content"] + continued() == "".join(lines)
        assert all(c.status == 200 for c in token_writes(discord_api, asked))  # never used past its life


async def test_a_message_still_downloading_when_parley_stops_is_stored_and_answered_at_the_next_start(
    discord_api: DiscordEmulator, engine_ignoring_dms: Engine, settings_ignoring_dms: Settings
) -> None:
    slow = [discord_api.attachment("big.txt", b"the contents", "text/plain", delay=1.0)]
    async with running(discord_api, engine_ignoring_dms):
        sent = await discord_api.send_message(
            GENERAL, f"<@{BOT_ID}> read this", mentions=[MENTION], attachments=slow
        )
        await until(lambda: discord_api.downloads == ["big.txt"])  # it arrived; Parley stops meanwhile
    (turn,) = await engine_ignoring_dms.store.history(str(IN_GENERAL), 10)
    assert turn.content.startswith("read this") and "the contents" in turn.content
    assert [entry.message.id for entry in await engine_ignoring_dms.store.pending("discord")] == [sent]
    assert discord_api.replies_to(sent) == []
    restarted = await Engine.create(settings_ignoring_dms, skills=builtin(settings_ignoring_dms))
    try:
        async with running(discord_api, restarted):
            await until(lambda: discord_api.replies_to(sent))
    finally:
        await restarted.aclose()
    (reply,) = discord_api.replies_to(sent)
    assert reply["content"].startswith("echo: Alice: read this") and "the contents" in reply["content"]
