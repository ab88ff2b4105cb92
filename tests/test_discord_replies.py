"""Streaming replies within Discord's rules: typing, pacing after a 429, interaction tokens that expire."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable

import discord
import pytest

import adapters.discord.surface as surface
from bot.config import Settings
from bot.engine import Engine
from bot.models import RenderBudget
from bot.streaming import Pacer
from skills import builtin
from tests.support.clock import FakeClock, settle
from tests.support.discord_emulator import BOT_ID, GENERAL, RANDOM, Call, DiscordEmulator, running, until
from tests.support.discord_harness import discord_settings_for, engine_on
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
    monkeypatch.setattr(surface, "TOKEN_SECONDS", TOKEN_LIFE)
    monkeypatch.setattr(surface, "TOKEN_MARGIN", 1.0)
    monkeypatch.setattr(surface, "TYPING_REFRESH", 0.3)
    settings = discord_settings_for(make_settings, discord_api)
    async with engine_on(settings, builtin(settings)) as engine, running(discord_api, engine):
        yield engine


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


async def test_after_a_429_the_next_edit_waits_its_second_from_when_the_retry_was_accepted(
    engine: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    discord_api.fail_next("PATCH", f"/channels/{GENERAL}/messages/", 429, retry_after=1.0)
    # Long enough for edits after the retried one, however late the retry is accepted: the final
    # text itself is not held to the interval.
    llm.enqueue(Script(tokens=[f"t{i} " for i in range(24)], delay=0.2))
    await discord_api.send_message(GENERAL, f"<@{BOT_ID}> count", mentions=[MENTION])
    await until(
        lambda: discord_api.messages_in(GENERAL) and "t23" in discord_api.messages_in(GENERAL)[0]["content"]
    )
    refused = [c for c in discord_api.calls if c.status == 429]
    accepted = discord_api.writes(GENERAL)
    assert len(refused) == 1 and len(accepted) >= 4
    # The edits are a second apart; the final text goes as soon as the provider is done.
    assert all(b.at - a.at >= 0.95 for a, b in itertools.pairwise(accepted[:-1]))


async def test_the_interval_between_renders_runs_from_when_the_last_was_accepted() -> None:
    clock = FakeClock()

    class HeldBack:
        """A surface whose second render the platform holds for 1.5 s (a 429 retried by the client)."""

        budget = RenderBudget(min_interval=1.0)

        def __init__(self) -> None:
            self.started: list[float] = []

        async def start(self) -> None:
            return None

        async def render(self, text: str, *, final: bool) -> int:
            self.started.append(clock.now())
            if len(self.started) == 2:
                await clock.sleep(1.5)
            return 1

    held = HeldBack()
    renderer = Pacer(clock).renderer(held)
    renderer.update("a")
    await settle()
    await clock.advance(1.0)
    renderer.update("ab")  # renders at once: a second has passed
    await settle()
    renderer.update("abc")  # waits: the render of "ab" is only accepted 1.5 s from now
    await clock.advance(3.0)
    assert [t - held.started[0] for t in held.started] == [0.0, 1.0, 3.5]
    finished = asyncio.create_task(renderer.finish("abcd"))  # the interval spaces edits, not the final
    await settle()
    await finished
    assert held.started[-1] - held.started[0] == 4.0  # when finish was called, not 4.5


async def test_ask_edits_are_paced_per_interaction_not_on_the_channel_budget() -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    edited: list[float] = []

    class ChannelReply:
        """Another reply in the same channel, drawing on the channel's budget."""

        budget = surface.channel_budget(GENERAL)

        async def start(self) -> None:
            return None

        async def render(self, text: str, *, final: bool) -> int:
            return 1

    class Webhook:
        """The part of an interaction's webhook that a short /ask reply uses."""

        async def edit_message(self, message_id: object, *, content: str, allowed_mentions: object) -> object:
            edited.append(clock.now())
            return discord.Object(1)

        async def send(self, content: str, *, allowed_mentions: object, wait: bool) -> object:
            raise AssertionError("a short reply needs no follow-up")

    channel = discord.Object(GENERAL)

    for _ in range(5):  # five short replies in the channel: its budget is spent for the next 5 s
        await pacer.renderer(ChannelReply()).finish("done")
    start = clock.now()
    interaction = surface.InteractionSurface(Webhook(), channel, expires_at=time.time() + 900)  # type: ignore[arg-type]
    ask = pacer.renderer(interaction)
    for text in ("a", "ab", "abc"):
        ask.update(text)
        await clock.advance(1.0)
    finished = asyncio.create_task(ask.finish("abcd"))
    await clock.advance(10.0)
    await finished
    assert [t - start for t in edited] == [0.0, 1.0, 2.0, 3.0]  # a second apart, not waiting for the channel


async def test_an_ask_that_outlives_its_token_continues_in_the_channel(
    engine: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    lines = [f"Line {i} of a long answer.\n" for i in range(16)]
    llm.enqueue(Script(tokens=lines, delay=0.3))  # ~5 s, past the token's 3 s
    asked = await discord_api.interact("ask", [{"name": "prompt", "type": 3, "value": "go long"}])
    answer = "".join(lines)

    def continued() -> str:
        posts = [m for m in discord_api.messages_in(GENERAL) if m.get("message_reference")]
        return str(posts[0]["content"]) if posts else ""

    await until(lambda: continued().endswith("Line 15 of a long answer.\n"), seconds=20)
    original = discord_api.original_response(asked)
    assert original is not None and original["content"].startswith("Line 0")
    # The response was cut back to its last full line before the token ran out; the rest follows.
    assert original["content"].endswith(".\n") and original["content"] + continued() == answer
    reference = next(m for m in discord_api.messages_in(GENERAL) if m.get("message_reference"))[
        "message_reference"
    ]
    assert str(reference["message_id"]) == original["id"]
    assert all(c.status == 200 for c in webhook_writes(discord_api, asked))  # never used past its life


async def test_an_ask_queued_past_its_token_says_so_and_answers_in_the_channel(
    engine: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=[f"w{i} " for i in range(12)], delay=0.35))  # the channel's reply: ~4 s
    await discord_api.send_message(GENERAL, f"<@{BOT_ID}> first", mentions=[MENTION])
    await until(lambda: llm.chat_requests())
    asked = await discord_api.interact("ask", [{"name": "prompt", "type": 3, "value": "then me"}])
    await until(lambda: (discord_api.original_response(asked) or {}).get("content") == surface.WAITING_NOTE)
    await until(
        lambda: any(m["content"] == "echo: Alice: then me" for m in discord_api.messages_in(GENERAL)),
        seconds=20,
    )
    answer = next(m for m in discord_api.messages_in(GENERAL) if m["content"] == "echo: Alice: then me")
    assert str(answer["message_reference"]["message_id"]) == discord_api.original_response(asked)["id"]  # type: ignore[index]
    assert all(c.status == 200 for c in webhook_writes(discord_api, asked))


async def test_a_reply_to_a_message_deleted_meanwhile_is_still_sent(
    engine: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["still here"], first_delay=0.5))
    sent = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> hello", mentions=[MENTION])
    await until(lambda: llm.chat_requests())
    await discord_api.delete_message(GENERAL, sent)
    await until(lambda: [m["content"] for m in discord_api.messages_in(GENERAL)] == ["still here"])


async def test_replies_under_way_are_closed_when_parley_stops(
    discord_api: DiscordEmulator, make_settings: Callable[..., Settings], llm: LLMServer
) -> None:
    settings = make_settings(
        discord_token="t",
        discord_api_base=discord_api.api_base,
        discord_gateway_url=discord_api.gateway_url,
        shutdown_grace_seconds=0.5,
    )
    engine = await Engine.create(settings)
    llm.enqueue(
        Script(tokens=["Halfway", " there"], stall_after=1), Script(tokens=["Also", " half"], stall_after=1)
    )
    async with running(discord_api, engine):
        await discord_api.send_message(GENERAL, f"<@{BOT_ID}> mention", mentions=[MENTION])
        await until(lambda: discord_api.messages_in(GENERAL))
        asked = await discord_api.interact(
            "ask", [{"name": "prompt", "type": 3, "value": "slash"}], channel=RANDOM
        )
        await until(
            lambda: (discord_api.original_response(asked) or {}).get("content") in ("Halfway", "Also")
        )
    await engine.aclose()
    closed = "\n\n_Cut off: Parley is restarting._"
    assert [m["content"] for m in discord_api.messages_in(GENERAL)] == [f"Halfway{closed}"]
    assert discord_api.original_response(asked)["content"] == f"Also{closed}"  # type: ignore[index]
