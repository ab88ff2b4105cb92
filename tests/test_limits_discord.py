"""Usage, budgets, access and metrics on Discord: the real discord.py client against the loopback Discord."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.access import NOT_ALLOWED
from bot.config import Settings
from bot.engine import Engine
from bot.metrics import serve
from skills import builtin
from tests.support.discord_emulator import (
    ALICE,
    BOB,
    BOT_ID,
    DM_CHANNEL,
    EPHEMERAL,
    GENERAL,
    GUILD_ID,
    MANAGER_ROLE,
    RANDOM,
    DiscordEmulator,
    running,
    until,
)
from tests.support.llm_server import LLMServer

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}


@pytest.fixture
def on_discord(discord_api: DiscordEmulator, make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Engine]:
        settings = make_settings(
            discord_token="discord-secret-token",
            discord_api_base=discord_api.api_base,
            discord_gateway_url=discord_api.gateway_url,
            **overrides,
        )
        engine = await Engine.create(settings, skills=builtin(settings))
        try:
            async with running(discord_api, engine):
                yield engine
        finally:
            await engine.aclose()

    return start


def texts(discord_api: DiscordEmulator) -> list[str]:
    return [m["content"] for m in discord_api.messages_in(GENERAL)]


async def mention(discord_api: DiscordEmulator, text: str, **more: Any) -> str:
    return await discord_api.send_message(GENERAL, f"<@{BOT_ID}> {text}", mentions=[MENTION], **more)


def callback_data(discord_api: DiscordEmulator, interaction: str) -> list[dict[str, Any]]:
    calls = discord_api.interaction_responses(interaction)
    return [c.json.get("data") or {} for c in calls if c.path.endswith("/callback") and c.status == 200]


async def test_usage_on_discord_is_ephemeral_and_knows_the_server(
    on_discord: Callable[..., Any], discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    async with on_discord() as engine:
        await mention(discord_api, "hello")
        await mention(discord_api, "hi", author=BOB)
        await until(lambda: _sample(engine, "parley_replies_total", outcome="ok") == 2)  # and recorded
        mine = await discord_api.interact("usage", [])
        await until(lambda: callback_data(discord_api, mine))
        (answer,) = callback_data(discord_api, mine)
        assert answer["flags"] == EPHEMERAL
        assert (
            answer["content"].startswith("Your usage this month")
            and ": 1 reply, 15 tokens" in answer["content"]
        )
        server = await discord_api.interact(
            "usage", [{"name": "scope", "type": 3, "value": "server"}], manager=True
        )
        await until(lambda: callback_data(discord_api, server))
        shown = callback_data(discord_api, server)[0]["content"]
        assert shown.startswith("Usage in this server this month") and ": 2 replies, 30 tokens" in shown
        assert "Top people:\n  Alice: 1 reply" in shown or "Top people:\n  Bob: 1 reply" in shown
        (row,) = await engine.store.usage_report("model", "server", 0)
        assert row["key"] == f"discord:{GUILD_ID}"


async def test_a_budget_used_up_is_said_in_the_reply_and_nothing_reaches_the_provider(
    on_discord: Callable[..., Any], discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    async with on_discord(budgets={"server_daily_tokens": 10}):
        await mention(discord_api, "hello")
        await until(lambda: texts(discord_api) == ["echo: Alice: hello"])
        await mention(discord_api, "again", author=BOB)
        await until(lambda: len(texts(discord_api)) == 2)
        assert texts(discord_api)[1].startswith(
            "This server's daily budget of 10 tokens is used up (15 tokens so far)"
        )
        assert len(llm.chat_requests()) == 1


async def test_a_denied_person_meets_silence_in_a_channel_and_nothing_is_stored(
    on_discord: Callable[..., Any], discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    async with on_discord(access={"deny_users": [ALICE["id"]]}) as engine:
        await mention(discord_api, "hello")
        await mention(discord_api, "hi", author=BOB)  # the sentinel: answered after Alice's was taken
        await until(lambda: texts(discord_api) == ["echo: Bob: hi"])
        assert [r.json["messages"][-1]["content"] for r in llm.chat_requests()] == ["Bob: hi"]
        assert [
            t.author_name for t in await engine.store.history(f"discord:{GENERAL}", 10) if t.role == "user"
        ] == ["Bob"]
        asked = await discord_api.interact("ask", [{"name": "prompt", "type": 3, "value": "hi"}])
        await until(lambda: callback_data(discord_api, asked))
        ((refused),) = callback_data(discord_api, asked)
        assert (refused["content"], refused["flags"]) == (NOT_ALLOWED, EPHEMERAL)
        assert len(llm.chat_requests()) == 1


async def test_a_refusal_can_be_said_in_the_channel_and_roles_let_people_in(
    on_discord: Callable[..., Any], discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    async with on_discord(access={"allow_roles": [str(MANAGER_ROLE)], "refuse_in_channel": "reply"}):
        await mention(discord_api, "hello")
        await until(lambda: texts(discord_api) == [NOT_ALLOWED])
        await mention(discord_api, "hi", author=BOB, roles=[MANAGER_ROLE])
        await until(lambda: texts(discord_api) == [NOT_ALLOWED, "echo: Bob: hi"])
        assert len(llm.chat_requests()) == 1


async def test_metrics_count_discords_429s_and_the_reply(
    on_discord: Callable[..., Any], discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    async with on_discord() as engine:
        runner = await serve(engine.store, engine.metrics, engine.health, 0, host="127.0.0.1")
        try:
            engine.health.up("discord")
            discord_api.fail_next("POST", f"/channels/{GENERAL}/messages", 429, retry_after=0.2)
            await mention(discord_api, "hello")
            await until(lambda: texts(discord_api) == ["echo: Alice: hello"])
            await until(lambda: _sample(engine, "parley_replies_total", outcome="ok"))
            port = runner.addresses[0][1]
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/metrics") as response,
            ):
                assert response.status == 200
                scraped = {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(await response.text())
                    for s in family.samples
                }
        finally:
            await runner.cleanup()
    assert scraped[("parley_platform_rate_limited_total", (("platform", "discord"),))] == 1
    assert scraped[("parley_replies_total", (("outcome", "ok"), ("platform", "discord")))] == 1


def _sample(engine: Engine, name: str, **labels: str) -> float | None:
    return engine.metrics.registry.get_sample_value(name, {"platform": "discord", **labels})


async def test_a_denied_person_is_answered_in_a_dm(
    on_discord: Callable[..., Any], discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    async with on_discord(access={"deny_users": [ALICE["id"]]}):
        await discord_api.send_message(DM_CHANNEL, "hello in private", guild=False)
        await until(lambda: [m["content"] for m in discord_api.messages_in(DM_CHANNEL)][-1:] == [NOT_ALLOWED])
        assert llm.chat_requests() == []


async def test_a_denied_channel_is_silent_and_the_others_are_answered(
    on_discord: Callable[..., Any], discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    async with on_discord(access={"deny_channels": [str(GENERAL)]}):
        await mention(discord_api, "hello")
        await discord_api.send_message(RANDOM, f"<@{BOT_ID}> over here", mentions=[MENTION])
        await until(
            lambda: [m["content"] for m in discord_api.messages_in(RANDOM)][-1:] == ["echo: Alice: over here"]
        )
        assert texts(discord_api) == [] and len(llm.chat_requests()) == 1
