"""Slash commands against Discord's deadlines and limits: 3 seconds to answer, 100-character choices.

A second provider whose model list answers only when the test says so stands for a provider that is
slow to list its models (Parley gives it up to 30 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from bot.config import Settings
from bot.engine import Engine
from bot.models import ConversationKey
from skills import builtin
from tests.support.discord_emulator import EPHEMERAL, GENERAL, Call, DiscordEmulator, running, until
from tests.support.llm_server import LLMServer
from tests.support.loopback import serve_app


class SlowModels:
    """An OpenAI-compatible model list that answers once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.asked = 0
        self.answered = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> SlowModels:
        app = web.Application()
        app.router.add_get("/v1/models", self._list)
        self._runner, self.port = await serve_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _list(self, request: web.Request) -> web.Response:
        self.asked += 1
        await self.release.wait()
        self.answered += 1
        return web.json_response({"data": [{"id": "slow-model"}]})


@pytest.fixture
async def slow() -> AsyncIterator[SlowModels]:
    async with SlowModels() as server:
        yield server


@pytest.fixture
async def engine(
    discord_api: DiscordEmulator, make_settings: Callable[..., Settings], slow: SlowModels
) -> AsyncIterator[Engine]:
    settings = make_settings(
        discord_token="t",
        discord_api_base=discord_api.api_base,
        discord_gateway_url=discord_api.gateway_url,
        ollama_base_url=slow.base_url,
        models_cache_seconds=0.0,  # every listing is stale at once: the pickers must not wait for it
    )
    engine = await Engine.create(settings, skills=builtin(settings))
    async with running(discord_api, engine):
        yield engine
    await engine.aclose()


def callbacks(discord_api: DiscordEmulator, interaction: str) -> list[Call]:
    return [c for c in discord_api.interaction_responses(interaction) if c.path.endswith("/callback")]


def answered_in_time(discord_api: DiscordEmulator, interaction: str) -> list[int]:
    """The callback types Discord accepted for an interaction (within 3 s, once)."""
    return [c.json["type"] for c in callbacks(discord_api, interaction) if c.status == 200]


def followups(discord_api: DiscordEmulator, interaction: str) -> list[dict[str, Any]]:
    token = f"token-{interaction}"
    posts = [
        c for c in discord_api.calls if c.method == "POST" and c.path.endswith(token) and c.status == 200
    ]
    return [c.json for c in posts]


async def test_the_model_lists_are_fetched_at_start(engine: Engine, slow: SlowModels, llm: LLMServer) -> None:
    await until(lambda: slow.asked == 1 and any(r.path == "/v1/models" for r in llm.requests))


async def test_models_waiting_on_a_slow_provider_is_deferred_then_answered(
    engine: Engine, discord_api: DiscordEmulator, slow: SlowModels
) -> None:
    asked = await discord_api.interact("models", [])
    await until(lambda: answered_in_time(discord_api, asked) == [5], seconds=5)
    assert callbacks(discord_api, asked)[0].json["data"]["flags"] == EPHEMERAL
    slow.release.set()
    await until(
        lambda: "ollama/slow-model" in (discord_api.original_response(asked) or {}).get("content", "")
    )
    listing = discord_api.original_response(asked)
    assert listing is not None and listing["flags"] == EPHEMERAL
    assert listing["content"].splitlines() == [
        "ollama/slow-model",
        "openrouter/openai/gpt-4o-mini",
        "openrouter/xiaomi/mimo-v2-flash  ← current",
    ]


async def test_a_deferred_model_switch_is_still_announced_to_the_channel(
    engine: Engine, discord_api: DiscordEmulator, slow: SlowModels
) -> None:
    switched = await discord_api.interact(
        "model", [{"name": "name", "type": 3, "value": "ollama/slow-model"}], manager=True
    )
    await until(lambda: answered_in_time(discord_api, switched) == [5], seconds=5)
    slow.release.set()
    await until(lambda: followups(discord_api, switched))
    said = "This channel now uses ollama/slow-model."
    original = discord_api.original_response(switched)
    assert original is not None and (original["content"], original["flags"]) == (said, EPHEMERAL)
    assert [(f["content"], f.get("flags", 0) & EPHEMERAL) for f in followups(discord_api, switched)] == [
        (said, 0)
    ]
    assert (await engine.settings_for(ConversationKey("discord", str(GENERAL)))).model == "ollama/slow-model"


async def test_quick_commands_are_answered_at_once_without_deferring(
    engine: Engine, discord_api: DiscordEmulator
) -> None:
    asked = await discord_api.interact("search", [{"name": "mode", "type": 3, "value": "auto"}], manager=True)
    await until(lambda: answered_in_time(discord_api, asked))
    assert answered_in_time(discord_api, asked) == [4]
    assert (
        callbacks(discord_api, asked)[0].json["data"]["content"] == "web_search in this channel is now auto."
    )


async def test_autocomplete_answers_within_the_deadline_from_what_is_listed(
    engine: Engine, discord_api: DiscordEmulator, slow: SlowModels
) -> None:
    # The slow provider has never answered: the choices come from the providers that have.
    await until(lambda: slow.asked == 1)
    typed = [{"name": "name", "type": 3, "value": "", "focused": True}]
    first = await discord_api.interact("model", typed, autocomplete=True)
    await until(lambda: callbacks(discord_api, first), seconds=5)
    assert answered_in_time(discord_api, first) == [8]
    assert [c["value"] for c in callbacks(discord_api, first)[0].json["data"]["choices"]] == [
        "openrouter/xiaomi/mimo-v2-flash",
        "openrouter/openai/gpt-4o-mini",
    ]
    # Once it has answered, its listing is used even while it is slow again (it is stale at once here).
    slow.release.set()
    await until(lambda: slow.answered == 1)
    slow.release.clear()
    second = await discord_api.interact("model", typed, autocomplete=True)
    await until(lambda: callbacks(discord_api, second), seconds=5)
    assert answered_in_time(discord_api, second) == [8]
    assert "ollama/slow-model" in [
        c["value"] for c in callbacks(discord_api, second)[0].json["data"]["choices"]
    ]
    assert slow.asked >= 2  # and it is being listed again, for the next keystroke


async def test_autocomplete_leaves_out_names_discord_would_refuse(
    engine: Engine, discord_api: DiscordEmulator, slow: SlowModels, llm: LLMServer
) -> None:
    slow.release.set()
    long_id = "vendor/" + "very-long-model-name-" * 5
    llm.models.append({"id": long_id})
    typed = [{"name": "name", "type": 3, "value": "model", "focused": True}]
    asked = await discord_api.interact("model", typed, autocomplete=True)
    await until(lambda: callbacks(discord_api, asked))
    assert answered_in_time(discord_api, asked) == [8]
    choices = callbacks(discord_api, asked)[0].json["data"]["choices"]
    assert [c["value"] for c in choices] == ["ollama/slow-model"]
    assert all(len(c["name"]) <= 100 and len(c["value"]) <= 100 for c in choices)


async def test_every_command_option_says_what_it_is_for(engine: Engine, discord_api: DiscordEmulator) -> None:
    synced = next(c for c in discord_api.calls if c.method == "PUT")
    assert synced.status == 200
    options = {
        (command["name"], option["name"]): option["description"]
        for command in synced.json
        for option in command.get("options", [])
    }
    assert set(options) == {
        ("ask", "prompt"), ("web", "query"), ("read", "url"), ("model", "name"), ("models", "filter"),
        ("regenerate", "model"), ("forget", "what"),
        ("system", "text"), ("search", "mode"), ("skills", "name"), ("skills", "mode"),
        ("autoreply", "state"), ("usage", "scope"), ("usage", "period"), ("budget", "scope"),
        ("budget", "period"), ("budget", "unit"), ("budget", "amount"),
        ("summarize", "range"),
        ("schedule", "action"), ("schedule", "details"),
        ("compare", "model_a"), ("compare", "model_b"), ("compare", "prompt"),
        ("prompt", "name"), ("prompt", "details"), ("persona", "action"), ("persona", "name"),
    }  # fmt: skip
    assert all(description != "…" and 1 <= len(description) <= 100 for description in options.values())


async def test_a_command_answer_over_2000_characters_continues_in_follow_ups(
    engine: Engine, discord_api: DiscordEmulator
) -> None:
    prompt = "\n".join(f"Rule {i}: answer in the voice of a patient teacher." for i in range(60))
    setting = await discord_api.interact(
        "system", [{"name": "text", "type": 3, "value": prompt}], manager=True
    )
    await until(lambda: answered_in_time(discord_api, setting))
    shown = await discord_api.interact("system", [])
    await until(lambda: followups(discord_api, shown))
    first = callbacks(discord_api, shown)[0].json["data"]
    rest = followups(discord_api, shown)
    assert [first["flags"], *(f["flags"] for f in rest)] == [EPHEMERAL] * (1 + len(rest))
    assert (
        "\n".join([first["content"], *(f["content"] for f in rest)])
        == f"System prompt for this channel:\n{prompt}"
    )
