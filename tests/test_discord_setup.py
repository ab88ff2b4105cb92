"""Starting Discord as an operator does: `parley run` and `parley discord sync` as subprocesses.

Every setup problem an operator can fix ends in one sentence and exit status 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

import adapters.discord.port as discord_port
from adapters.discord.port import DiscordPlatform
from bot.config import Settings, SetupError
from bot.engine import Engine
from tests.support.cli import parley
from tests.support.discord_emulator import APP_ID, BOT_ID, GENERAL, DiscordEmulator, running, until
from tests.support.llm_server import LLMServer
from tests.support.slack_api import SlackAPI

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}


def discord_env(discord_api: DiscordEmulator) -> dict[str, str]:
    return {
        "DISCORD_TOKEN": "discord-very-secret",
        "DISCORD_API_BASE": discord_api.api_base,
        "DISCORD_GATEWAY_URL": discord_api.gateway_url,
    }


def said(err: str) -> str:
    """What `parley` said on stderr after its log lines (whose format is the logging settings' business)."""
    assert "Traceback" not in err and "very-secret" not in err, err
    return err.strip().splitlines()[-1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_refused(settings: Settings) -> str:
    """What `start` refuses with, in its one sentence."""
    engine = await Engine.create(settings)
    try:
        with pytest.raises(SetupError) as refused:
            await DiscordPlatform(engine, engine.settings).start()
    finally:
        await engine.aclose()
    return str(refused.value)


async def test_run_with_the_message_content_intent_off_stops_everything_in_one_sentence(
    llm: LLMServer, workdir: Path
) -> None:
    async with DiscordEmulator(message_content=False) as discord_api, SlackAPI() as slack:
        slack_env = {
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_APP_TOKEN": "xapp-test",
            "SLACK_API_URL": slack.api_url,
        }
        code, _out, err = await parley(llm, workdir, "run", **discord_env(discord_api), **slack_env)
    assert discord_api.closed_with == [4014]
    assert code == 1, err
    assert said(err) == (
        "error: Discord refused the connection because the bot's Message Content intent is off: switch on "
        "Message Content Intent under Bot → Privileged Gateway Intents at "
        f"https://discord.com/developers/applications/{APP_ID}/bot, then start Parley again "
        "(Parley stops, every platform with it, rather than run a Discord bot that cannot read mentions)"
    )


async def test_run_says_in_one_sentence_when_discord_is_unreachable(llm: LLMServer, workdir: Path) -> None:
    api_base = f"http://127.0.0.1:{closed_port()}/api/v10"
    env = {"DISCORD_TOKEN": "discord-very-secret", "DISCORD_API_BASE": api_base}
    code, _out, err = await parley(llm, workdir, "run", **env)
    assert (code, said(err)) == (
        1,
        f"error: Could not reach Discord at {api_base} (nothing answers there); check the network "
        "connection, or DISCORD_API_BASE if you set it",
    )


async def test_discord_sync_with_a_bad_token_says_so_in_one_sentence(llm: LLMServer, workdir: Path) -> None:
    async with DiscordEmulator() as discord_api:
        discord_api.fail_next("GET", "/users/@me", 401)
        code, out, err = await parley(llm, workdir, "discord", "sync", **discord_env(discord_api))
        assert (code, out, said(err)) == (
            1,
            "",
            "error: Discord refused DISCORD_TOKEN; reset the token in the developer portal",
        )
        assert not [c for c in discord_api.calls if c.method == "PUT"]


async def test_discord_sync_says_in_one_sentence_when_discord_is_unreachable(
    llm: LLMServer, workdir: Path
) -> None:
    api_base = f"http://127.0.0.1:{closed_port()}/api/v10"
    code, _out, err = await parley(
        llm, workdir, "discord", "sync", DISCORD_TOKEN="discord-very-secret", DISCORD_API_BASE=api_base
    )
    assert code == 1 and said(err).startswith(f"error: Could not reach Discord at {api_base} (nothing")


async def test_discord_sync_answers_with_what_it_registered(llm: LLMServer, workdir: Path) -> None:
    async with DiscordEmulator() as discord_api:
        code, out, err = await parley(llm, workdir, "discord", "sync", **discord_env(discord_api))
    assert (code, out.strip()) == (
        0,
        "Synced 24 commands globally; Discord may take a while to show them everywhere.",
    ), err


async def test_refused_slash_commands_are_logged_and_the_bot_still_answers(
    llm: LLMServer, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with DiscordEmulator() as discord_api:
        discord_api.fail_next("PUT", "/commands", 400)
        settings = make_settings(
            discord_token="t",
            discord_api_base=discord_api.api_base,
            discord_gateway_url=discord_api.gateway_url,
        )
        engine = await Engine.create(settings)
        try:
            async with running(discord_api, engine):
                await discord_api.send_message(GENERAL, f"<@{BOT_ID}> still there?", mentions=[MENTION])
                await until(
                    lambda: (
                        [m["content"] for m in discord_api.messages_in(GENERAL)]
                        == ["echo: Alice: still there?"]
                    )
                )
        finally:
            await engine.aclose()
        assert (
            "Discord refused the slash commands (400: Injected failure); they were not updated" in caplog.text
        )
        # Nothing was remembered as synced, so the next start tries again.
        engine = await Engine.create(settings)
        try:
            async with running(discord_api, engine):
                pass
        finally:
            await engine.aclose()
    puts = [c.status for c in discord_api.calls if c.method == "PUT"]
    assert puts == [400, 200]
    assert not any(r.levelno >= logging.ERROR and r.exc_info for r in caplog.records)


def connected_to(
    discord_api: DiscordEmulator, make_settings: Callable[..., Settings], **more: str
) -> Settings:
    where = {"discord_api_base": discord_api.api_base, "discord_gateway_url": discord_api.gateway_url}
    return make_settings(discord_token="t", **{**where, **more})


async def test_a_token_the_gateway_refuses_is_one_sentence(
    make_settings: Callable[..., Settings],
) -> None:
    async with DiscordEmulator() as discord_api:
        discord_api.identify_refused = 4004
        refused = await start_refused(connected_to(discord_api, make_settings))
    assert refused == (
        "Discord refused DISCORD_TOKEN on the gateway; reset the token in the developer portal"
    )


async def test_a_gateway_that_cannot_be_reached_is_one_sentence(
    make_settings: Callable[..., Settings],
) -> None:
    async with DiscordEmulator() as discord_api:
        gateway = f"ws://127.0.0.1:{closed_port()}/gateway"
        refused = await start_refused(connected_to(discord_api, make_settings, discord_gateway_url=gateway))
    assert refused == (
        f"Could not reach Discord's gateway at {gateway} (nothing answers there); check the network "
        "connection, or DISCORD_GATEWAY_URL if you set it"
    )


async def test_a_gateway_that_never_lets_parley_in_is_one_sentence_within_the_start_limit(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord_port, "START_SECONDS", 0.5)
    async with DiscordEmulator() as discord_api:
        discord_api.hold_ready = True  # the gateway answers but never says READY
        refused = await start_refused(connected_to(discord_api, make_settings))
    assert refused == (
        f"Discord's gateway at {discord_api.gateway_url} did not let Parley in within 0.5 seconds; check "
        "the network connection, or DISCORD_GATEWAY_URL if you set it"
    )


async def test_when_discord_drops_parley_for_good_wait_closed_returns_and_says_why(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with DiscordEmulator() as discord_api:
        engine = await Engine.create(connected_to(discord_api, make_settings))
        async with running(discord_api, engine) as platform:
            await discord_api.close_gateway(4004)  # the token was reset while Parley ran
            await asyncio.wait_for(platform.wait_closed(), 10)
        await engine.aclose()
    assert "Discord stopped: the gateway closed the connection with code 4004" in caplog.text


async def test_a_stop_is_not_taken_for_discord_going_away(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with DiscordEmulator() as discord_api:
        engine = await Engine.create(connected_to(discord_api, make_settings))
        async with running(discord_api, engine) as platform:
            waiting = asyncio.ensure_future(platform.wait_closed())
        await asyncio.wait_for(waiting, 10)
        await engine.aclose()
    assert "Discord stopped" not in caplog.text
