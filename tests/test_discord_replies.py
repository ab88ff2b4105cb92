"""Streaming replies within Discord's rules: typing, pacing after a 429, interaction tokens that expire."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

import adapters.discord.surface as surface
from bot.config import Settings
from bot.engine import Engine
from tests.support.discord_emulator import BOT_ID, GENERAL, Call, DiscordEmulator, running, until
from tests.support.llm_server import LLMServer, Script

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}
TOKEN_LIFE = 3.0


@pytest.fixture
async def discord_api() -> AsyncIterator[DiscordEmulator]:
    # Interaction tokens live 3 s here, not 15 minutes, and Parley is told so below.
    async with DiscordEmulator(token_seconds=TOKEN_LIFE) as emulator:
        yield emulator


@pytest.fixture
async def engine(
    discord_api: DiscordEmulator, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Engine]:
    monkeypatch.setattr(surface, "TYPING_REFRESH", 0.3)
    settings = make_settings(
        discord_token="t", discord_api_base=discord_api.api_base, discord_gateway_url=discord_api.gateway_url
    )
    engine = await Engine.create(settings)
    async with running(discord_api, engine):
        yield engine
    await engine.aclose()


def webhook_writes(discord_api: DiscordEmulator, interaction: str) -> list[Call]:
    token = f"token-{interaction}"
    return [c for c in discord_api.calls if "/webhooks/" in c.path and token in c.path]


async def test_typing_is_kept_up_until_the_first_text(
    engine: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["at last"], first_delay=2.0))
    await discord_api.send_message(GENERAL, f"<@{BOT_ID}> think hard", mentions=[MENTION])
    await until(lambda: [m["content"] for m in discord_api.messages_in(GENERAL)] == ["at last"])
    calls = [c for c in discord_api.calls if f"/channels/{GENERAL}/" in c.path]
    first_text = next(i for i, c in enumerate(calls) if c.path.endswith("/messages"))
    assert all(c.path.endswith("/typing") for c in calls[:first_text])
    assert first_text >= 3  # one indicator lasts 10 s on Discord (0.3 s here); the model took longer
    assert not [c for c in calls[first_text:] if c.path.endswith("/typing")]


async def test_a_reply_to_a_message_deleted_meanwhile_is_still_sent(
    engine: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["still here"], first_delay=0.5))
    sent = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> hello", mentions=[MENTION])
    await until(lambda: llm.chat_requests())
    await discord_api.delete_message(GENERAL, sent)
    await until(lambda: [m["content"] for m in discord_api.messages_in(GENERAL)] == ["still here"])
