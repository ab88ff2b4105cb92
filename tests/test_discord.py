"""The real discord.py client against a loopback Discord, answering through the real engine."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.discord import sync_commands
from adapters.discord.client import NOT_STORED
from adapters.discord.text import split_reply
from bot.config import Settings
from bot.engine import Engine
from skills import builtin
from tests.support.discord_emulator import (
    APP_ID,
    BOB,
    BOT_ID,
    BOT_USER,
    DM_CHANNEL,
    GENERAL,
    RANDOM,
    THREAD,
    DiscordEmulator,
    running,
    until,
)
from tests.support.llm_server import LLMServer, Script
from tests.support.search_server import SearchServer

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}


@pytest.fixture
async def bot(
    discord_api: DiscordEmulator, make_settings: Callable[..., Settings], search: SearchServer
) -> AsyncIterator[Engine]:
    settings = make_settings(
        discord_token="discord-secret-token",
        discord_api_base=discord_api.api_base,
        discord_gateway_url=discord_api.gateway_url,
        **search.settings(),
    )
    engine = await Engine.create(settings, skills=builtin(settings))
    async with running(discord_api, engine):
        yield engine
    await engine.aclose()


def assert_no_pings(discord_api: DiscordEmulator) -> None:
    """Every message Parley sent or edited allows no mentions at all: model output never pings anyone."""
    writes = [c for c in discord_api.calls if c.method in ("POST", "PATCH") and isinstance(c.json, dict)]
    contents = [c.json.get("data", c.json) for c in writes if "content" in c.json.get("data", c.json)]
    assert contents
    for body in contents:
        assert body["allowed_mentions"]["parse"] == [], body
        assert not body["allowed_mentions"].get("users") and not body["allowed_mentions"].get("roles")


def final_text(discord_api: DiscordEmulator, channel: int) -> list[str]:
    return [m["content"] for m in discord_api.messages_in(channel)]


async def test_a_mention_gets_typing_then_a_reply_edited_to_the_final_text(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["Hello", " Alice,", " nice", " to", " meet", " you."], delay=0.3))
    await discord_api.send_message(GENERAL, f"<@{BOT_ID}> hi there", mentions=[MENTION])
    await until(lambda: final_text(discord_api, GENERAL) == ["Hello Alice, nice to meet you."])
    calls = [
        (c.method, c.path.rsplit("/", 1)[-1]) for c in discord_api.calls if f"/channels/{GENERAL}/" in c.path
    ]
    assert calls[0] == ("POST", "typing")
    writes = discord_api.writes(GENERAL)
    assert writes[0].method == "POST" and writes[0].json["message_reference"]["message_id"]
    assert all(w.method == "PATCH" for w in writes[1:]) and len(writes) >= 2
    # Edits are a second apart; the final text goes as soon as the provider is done.
    assert all(b.at - a.at >= 0.95 for a, b in itertools.pairwise(writes[:-1]))
    assert_no_pings(discord_api)
    sent = llm.chat_requests()[0].json["messages"][-1]["content"]
    assert sent == "Alice: hi there"


async def test_unaddressed_bot_and_system_messages_are_ignored(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    await discord_api.send_message(GENERAL, "just chatting")
    await discord_api.send_message(
        GENERAL, f"<@{BOT_ID}> from a bot", mentions=[MENTION], author=BOB, bot=True
    )
    await discord_api.send_message(GENERAL, f"<@{BOT_ID}> pinned", mentions=[MENTION], message_type=6)
    await asyncio.sleep(0.5)
    assert llm.chat_requests() == [] and discord_api.writes(GENERAL) == []


async def test_a_long_reply_with_code_is_split_with_fences_reopened(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    code = "\n".join(f"print({i})  # {'x' * 40}" for i in range(80))
    answer = "Here you go:\n\n```python\n" + code + "\n```\n\nDone."
    llm.enqueue(Script(tokens=[answer]))
    await discord_api.send_message(GENERAL, f"<@{BOT_ID}> write code", mentions=[MENTION])
    await until(
        lambda: final_text(discord_api, GENERAL) and final_text(discord_api, GENERAL)[-1].endswith("Done.")
    )
    pieces = final_text(discord_api, GENERAL)
    assert pieces == split_reply(answer) and len(pieces) >= 3
    assert all(len(p) <= 2000 and p.count("```") % 2 == 0 for p in pieces)
    assert all(p.startswith("```python\n") for p in pieces[1:-1])


async def test_a_429_on_an_edit_is_honoured_and_the_reply_completes(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    discord_api.fail_next("PATCH", f"/channels/{GENERAL}/messages/", 429, retry_after=0.5)
    llm.enqueue(Script(tokens=["one", " two", " three", " four"], delay=0.4))
    await discord_api.send_message(GENERAL, f"<@{BOT_ID}> count", mentions=[MENTION])
    await until(lambda: final_text(discord_api, GENERAL) == ["one two three four"])
    assert discord_api.state.faults == []  # the 429 was served


async def test_concurrent_replies_in_one_channel_keep_the_channel_budget(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    for _ in range(4):
        llm.enqueue(Script(tokens=[f"w{i} " for i in range(12)], delay=0.25))
    for user in range(4):
        author = {
            "id": str(100_000_000_000_002_000 + user),
            "username": f"u{user}",
            "global_name": f"User{user}",
        }
        # Different threads of conversation in one channel: autoreply off, each mentions the bot.
        await discord_api.send_message(GENERAL, f"<@{BOT_ID}> go {user}", mentions=[MENTION], author=author)
    await until(
        lambda: (
            len(final_text(discord_api, GENERAL)) == 4
            and all(t.endswith("w11 ") or t.endswith("w11") for t in final_text(discord_api, GENERAL))
        ),
        seconds=60,
    )
    times = [w.at for w in discord_api.writes(GENERAL)]
    assert all(sum(1 for u in times if t <= u < t + 5.0) <= 5 for t in times)
    assert discord_api.rate_limited == 0


async def test_model_commands_are_per_channel_and_need_manage_channels(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    refused = await discord_api.interact(
        "model", [{"name": "name", "type": 3, "value": "openrouter/openai/gpt-4o-mini"}]
    )
    await until(lambda: discord_api.interaction_responses(refused))
    response = discord_api.interaction_responses(refused)[0].json
    assert response["data"]["content"] == "Only channel managers and Parley admins can change the model."
    assert response["data"]["flags"] == 64  # ephemeral
    switched = await discord_api.interact(
        "model", [{"name": "name", "type": 3, "value": "openrouter/openai/gpt-4o-mini"}], manager=True
    )
    await until(lambda: discord_api.interaction_responses(switched))
    assert discord_api.interaction_responses(switched)[0].json["data"]["content"] == (
        "This channel now uses openrouter/openai/gpt-4o-mini."
    )
    await discord_api.send_message(GENERAL, f"<@{BOT_ID}> one", mentions=[MENTION])
    await until(lambda: len(llm.chat_requests()) == 1)
    await discord_api.send_message(RANDOM, f"<@{BOT_ID}> two", mentions=[MENTION])
    await until(lambda: len(llm.chat_requests()) == 2)
    await discord_api.send_message(THREAD, f"<@{BOT_ID}> three", mentions=[MENTION])
    await until(lambda: len(llm.chat_requests()) == 3)
    models = {r.json["messages"][-1]["content"]: r.json["model"] for r in llm.chat_requests()}
    assert models == {
        "Alice: one": "openai/gpt-4o-mini",
        "Alice: two": "xiaomi/mimo-v2-flash",
        "Alice: three": "openai/gpt-4o-mini",
    }


async def test_model_autocomplete_is_filtered_and_marks_the_current_model(
    bot: Engine, discord_api: DiscordEmulator
) -> None:
    asked = await discord_api.interact(
        "model", [{"name": "name", "type": 3, "value": "mimo", "focused": True}], autocomplete=True
    )
    await until(lambda: discord_api.interaction_responses(asked))
    choices = discord_api.interaction_responses(asked)[0].json["data"]["choices"]
    assert choices == [
        {"name": "openrouter/xiaomi/mimo-v2-flash (current)", "value": "openrouter/xiaomi/mimo-v2-flash"}
    ]


async def test_ask_streams_into_the_deferred_response(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    asked = await discord_api.interact("ask", [{"name": "prompt", "type": 3, "value": "what is 2+2?"}])
    await until(
        lambda: any(
            c.method == "PATCH"
            and "@original" in c.path
            and c.json.get("content") == "echo: Alice: what is 2+2?"
            for c in discord_api.interaction_responses(asked)
        )
    )
    assert discord_api.interaction_responses(asked)[0].json["type"] == 5  # deferred first, within 3 s


async def test_web_answers_with_sources_as_links_without_previews(
    bot: Engine, discord_api: DiscordEmulator, search: SearchServer
) -> None:
    asked = await discord_api.interact("web", [{"name": "query", "type": 3, "value": "parley release"}])
    # Discord renders the Markdown as is; <url> inside the link keeps Discord from embedding a preview.
    sources = f"**Sources**\n[1] [Parley 2.0 | released](<{search.base_url}/release>)"
    expected = f"echo: Alice: parley release\n\n{sources}"
    await until(
        lambda: any(
            c.method == "PATCH" and "@original" in c.path and c.json.get("content") == expected
            for c in discord_api.interaction_responses(asked)
        )
    )
    assert search.queries == ["parley release"]
    assert_no_pings(discord_api)


async def test_a_dm_is_answered_without_a_mention(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    await discord_api.send_message(DM_CHANNEL, "hello in private", guild=False)
    await until(lambda: llm.chat_requests())
    assert llm.chat_requests()[0].json["messages"][-1]["content"] == "Alice: hello in private"


async def test_autoreply_and_replies_to_the_bot_need_no_mention(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    switched = await discord_api.interact(
        "autoreply", [{"name": "state", "type": 3, "value": "on"}], channel=RANDOM, manager=True
    )
    await until(lambda: discord_api.interaction_responses(switched))
    await discord_api.send_message(RANDOM, "no mention here")
    await until(lambda: len(llm.chat_requests()) == 1)
    await until(lambda: discord_api.messages_in(RANDOM))
    bot_message = {**discord_api.messages_in(RANDOM)[0], "author": BOT_USER}
    await discord_api.send_message(GENERAL, "following up", referenced=bot_message)
    await until(lambda: len(llm.chat_requests()) == 2)
    assert [r.json["messages"][-1]["content"] for r in llm.chat_requests()] == [
        "Alice: no mention here",
        "Alice: following up",
    ]
    assert_no_pings(discord_api)


async def test_attachments_are_read_in_or_named(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    files = [
        discord_api.attachment("notes.txt", b"the launch is on Friday", "text/plain"),
        discord_api.attachment("slides.pdf", b"%PDF-1.7", "application/pdf"),
    ]
    await discord_api.send_message(GENERAL, f"<@{BOT_ID}> summarise", mentions=[MENTION], attachments=files)
    await until(
        lambda: final_text(discord_api, GENERAL) and "slides.pdf" in final_text(discord_api, GENERAL)[-1]
    )
    sent = llm.chat_requests()[0].json["messages"][-1]["content"]
    assert '<file name="notes.txt">\nthe launch is on Friday\n</file>' in sent
    assert final_text(discord_api, GENERAL)[-1].endswith("_slides.pdf is not a file type I can read._")


async def test_one_persons_messages_are_answered_in_the_order_they_were_sent(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    """The first message's file takes a while to download; the second, sent just after, waits for it."""
    slow = [discord_api.attachment("minutes.txt", b"we met", "text/plain", delay=1.0)]
    first = await discord_api.send_message(
        GENERAL, f"<@{BOT_ID}> read this", mentions=[MENTION], attachments=slow
    )
    second = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> and then this", mentions=[MENTION])
    await until(lambda: discord_api.replies_to(first) and discord_api.replies_to(second))
    asked = [r.json["messages"][-1]["content"] for r in llm.chat_requests()]
    assert asked[0].startswith("Alice: read this") and asked[1] == "Alice: and then this"
    assert int(discord_api.replies_to(first)[0]["id"]) < int(discord_api.replies_to(second)[0]["id"])


async def test_a_message_that_cannot_be_stored_is_refused_in_one_sentence(
    bot: Engine, discord_api: DiscordEmulator, llm: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(*args: object) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(bot.store, "accept", unavailable)
    sent = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> hello", mentions=[MENTION])
    await until(lambda: discord_api.replies_to(sent))
    assert [m["content"] for m in discord_api.replies_to(sent)] == [NOT_STORED]
    asked = await discord_api.interact("ask", [{"name": "prompt", "type": 3, "value": "hi"}])
    await until(lambda: (discord_api.original_response(asked) or {}).get("content"))
    assert discord_api.original_response(asked)["content"].startswith("Parley could not take this command")  # type: ignore[index]
    assert llm.chat_requests() == []


async def test_commands_are_synced_only_when_they_change(
    discord_api: DiscordEmulator, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        discord_token="t", discord_api_base=discord_api.api_base, discord_gateway_url=discord_api.gateway_url
    )
    for _ in range(2):
        engine = await Engine.create(settings, skills=builtin(settings))
        async with running(discord_api, engine):
            pass
        await engine.aclose()
    syncs = [c for c in discord_api.calls if c.method == "PUT" and c.path.endswith("/commands")]
    assert len(syncs) == 1
    assert {command["name"] for command in syncs[0].json} == {
        "ask", "web", "read", "model", "models", "system", "reset", "search", "skills", "autoreply", "help",
        "usage", "budget", "access",
        "summarize", "schedule",
        "stop", "history", "forget", "regenerate",
        "compare", "arena",
        "prompt", "persona",
    }  # fmt: skip


async def test_sync_to_one_server_registers_the_commands_there(
    discord_api: DiscordEmulator, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        discord_token="t", discord_api_base=discord_api.api_base, discord_gateway_url=discord_api.gateway_url
    )
    said = await sync_commands(settings, 4242, builtin(settings))
    assert said == "Synced 24 commands to server 4242; they are available there now."
    puts = [c for c in discord_api.calls if c.method == "PUT"]
    assert [c.path for c in puts] == [f"/api/v10/applications/{APP_ID}/guilds/4242/commands"]
