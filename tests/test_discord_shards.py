"""Discord shards: the loopback gateway routes and refuses as Discord does, and Parley runs a client per
shard it holds (all of them in one process on SQLite), each IDENTIFY in its bucket's slot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from adapters.discord.port import DiscordPlatform
from bot.config import ConfigError, Settings, SetupError
from bot.settings_loader import load_settings
from bot.shards import IDENTIFY_SECONDS
from tests.support.cli import CHECKOUT, spawn_parley
from tests.support.discord_emulator import (
    BOT_ID,
    DM_CHANNEL,
    ELSEWHERE,
    GENERAL,
    GUILD_ID,
    OTHER_GUILD,
    DiscordEmulator,
    running,
    shard_of,
    until,
)
from tests.support.discord_harness import discord_settings_for, engine_on
from tests.support.llm_server import LLMServer

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}


def test_the_two_servers_are_on_different_shards_of_two() -> None:
    assert (shard_of(GUILD_ID, 2), shard_of(OTHER_GUILD, 2)) == (0, 1)


@pytest.mark.parametrize("written", ["0", "-2"])
def test_a_shard_count_below_one_is_refused_in_one_sentence(
    written: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name not in ("PATH", "HOME", "TMPDIR"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DISCORD_SHARD_COUNT", written)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert refused.value.problems == [
        "DISCORD_SHARD_COUNT (set in the environment) must be 1 or more (the number of Discord gateway "
        f"shards, the same on every instance), not {written}."
    ]


# The loopback gateway, driven by a raw websocket


class Gateway:
    """One raw gateway connection to the loopback Discord."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.events: list[dict[str, Any]] = []

    async def identify(self, shard: list[int] | None) -> dict[str, Any] | int:
        """READY's data, the op of another answer (9: invalid session), or the close code."""
        assert (await self.socket.receive_json())["op"] == 10
        payload: dict[str, Any] = {"token": "t", "intents": 1 << 15, "properties": {}}
        if shard is not None:
            payload["shard"] = shard
        await self.socket.send_json({"op": 2, "d": payload})
        answer = await self.socket.receive()
        if answer.type == aiohttp.WSMsgType.CLOSE:
            return int(answer.data)
        message = answer.json()
        return message["d"] if message["op"] == 0 and message["t"] == "READY" else int(message["op"])

    async def listen(self) -> None:
        async for frame in self.socket:
            if frame.type == aiohttp.WSMsgType.TEXT:
                self.events.append(frame.json())

    def saw(self, event: str, channel: int) -> bool:
        return any(e.get("t") == event and e["d"].get("channel_id") == str(channel) for e in self.events)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def connect(http: aiohttp.ClientSession, discord_api: DiscordEmulator) -> Gateway:
    return Gateway(await http.ws_connect(discord_api.gateway_url))


async def test_gateway_bot_says_the_shard_count_and_max_concurrency(http: aiohttp.ClientSession) -> None:
    async with (
        DiscordEmulator(shards=2, max_concurrency=2) as discord_api,
        http.get(f"{discord_api.api_base}/gateway/bot") as answer,
    ):
        body = await answer.json()
    assert body["shards"] == 2 and body["url"] == discord_api.gateway_url
    assert body["session_start_limit"]["max_concurrency"] == 2


@pytest.mark.parametrize(
    ("shard", "code"),
    [([2, 2], 4010), ([-1, 2], 4010), ([0, 3], 4010), (None, 4011), ([0, 1], 4011), (["0", 2], 4010)],
)
async def test_an_identify_with_a_shard_discord_would_refuse_is_closed(
    http: aiohttp.ClientSession, shard: list[Any] | None, code: int
) -> None:
    async with DiscordEmulator(shards=2) as discord_api:
        gateway = await connect(http, discord_api)
        assert await gateway.identify(shard) == code
        assert discord_api.closed_with == [code] and discord_api.identifies == []


async def test_identifies_over_max_concurrency_get_invalid_session(http: aiohttp.ClientSession) -> None:
    async with DiscordEmulator(shards=4, max_concurrency=2) as discord_api:
        first, second, third = [await connect(http, discord_api) for _ in range(3)]
        assert isinstance(await first.identify([0, 4]), dict)
        assert isinstance(await second.identify([1, 4]), dict)  # bucket 1 has a slot of its own
        assert await third.identify([2, 4]) == 9  # bucket 0 again, within 5 seconds: Invalid Session
        assert discord_api.identify_refusals == [(2, "identified too soon after another in its bucket")]
        assert [shard for shard, _at in discord_api.identifies] == [0, 1]


async def test_events_go_to_their_servers_shard_and_direct_messages_to_shard_0(
    http: aiohttp.ClientSession,
) -> None:
    async with DiscordEmulator(shards=2, max_concurrency=2) as discord_api:
        zero, one = await connect(http, discord_api), await connect(http, discord_api)
        ready_zero, ready_one = await zero.identify([0, 2]), await one.identify([1, 2])
        assert isinstance(ready_zero, dict) and isinstance(ready_one, dict)
        assert [g["id"] for g in ready_zero["guilds"]] == [str(GUILD_ID)]
        assert [g["id"] for g in ready_one["guilds"]] == [str(OTHER_GUILD)]
        listening = [asyncio.ensure_future(g.listen()) for g in (zero, one)]
        await discord_api.send_message(GENERAL, "on shard 0")
        await discord_api.send_message(ELSEWHERE, "on shard 1")
        await discord_api.send_message(DM_CHANNEL, "a direct message", guild=False)
        await until(lambda: zero.saw("MESSAGE_CREATE", DM_CHANNEL) and one.saw("MESSAGE_CREATE", ELSEWHERE))
        for task in listening:
            task.cancel()
    assert zero.saw("MESSAGE_CREATE", GENERAL) and not zero.saw("MESSAGE_CREATE", ELSEWHERE)
    assert not one.saw("MESSAGE_CREATE", GENERAL) and not one.saw("MESSAGE_CREATE", DM_CHANNEL)


async def test_a_second_session_on_a_shard_replaces_the_first(http: aiohttp.ClientSession) -> None:
    async with DiscordEmulator(shards=2, max_concurrency=2) as discord_api:
        older = await connect(http, discord_api)
        assert isinstance(await older.identify([0, 2]), dict)
        discord_api._bucket_starts.clear()  # as if 5 seconds had passed
        newer = await connect(http, discord_api)
        assert isinstance(await newer.identify([0, 2]), dict)
        while (frame := await older.socket.receive()).type == aiohttp.WSMsgType.TEXT:
            pass  # the GUILD_CREATE sent before
        assert frame.type == aiohttp.WSMsgType.CLOSE and frame.data == 4009
        assert discord_api.sessions_on(0) == 1


# Parley's shards in one process (SQLite)


def sharded(
    discord_api: DiscordEmulator, make_settings: Callable[..., Settings], count: int, **more: Any
) -> Settings:
    return discord_settings_for(make_settings, discord_api, discord_shard_count=count, **more)


@contextlib.asynccontextmanager
async def on_shards(
    make_settings: Callable[..., Settings], count: int, *, max_concurrency: int
) -> AsyncIterator[tuple[DiscordEmulator, DiscordPlatform]]:
    """Parley running `count` shards on a loopback Discord of two shards, without skills."""
    async with (
        DiscordEmulator(shards=2, max_concurrency=max_concurrency) as discord_api,
        engine_on(sharded(discord_api, make_settings, count)) as engine,
        running(discord_api, engine) as platform,
    ):
        yield discord_api, platform


async def test_one_process_runs_both_shards_and_answers_on_each(
    make_settings: Callable[..., Settings],
) -> None:
    async with on_shards(make_settings, 2, max_concurrency=2) as (discord_api, platform):
        assert sorted(platform.shards) == [0, 1] and discord_api.sessions_on(1) == 1
        # Each shard's client has its own server, and DMs arrive on shard 0.
        assert platform.shards[1].get_channel(ELSEWHERE) is not None
        assert platform.shards[0].get_channel(ELSEWHERE) is None
        await discord_api.send_message(GENERAL, f"<@{BOT_ID}> here?", mentions=[MENTION])
        await discord_api.send_message(ELSEWHERE, f"<@{BOT_ID}> there?", mentions=[MENTION])
        await discord_api.send_message(DM_CHANNEL, "and in private?", guild=False)
        await until(
            lambda: (
                [m["content"] for m in discord_api.messages_in(GENERAL)] == ["echo: Alice: here?"]
                and [m["content"] for m in discord_api.messages_in(ELSEWHERE)] == ["echo: Alice: there?"]
                and [m["content"] for m in discord_api.messages_in(DM_CHANNEL)]
                == ["echo: Alice: and in private?"]
            )
        )
    syncs = [c for c in discord_api.calls if c.method == "PUT" and c.path.endswith("/commands")]
    assert len(syncs) == 1  # by the REST client, once, not once per shard
    assert discord_api.identify_refusals == []


async def test_shards_of_one_bucket_identify_five_seconds_apart(
    make_settings: Callable[..., Settings],
) -> None:
    async with on_shards(make_settings, 2, max_concurrency=1) as (discord_api, _platform):
        (_, first), (_, second) = discord_api.identifies
    assert second - first >= IDENTIFY_SECONDS and discord_api.identify_refusals == []


async def test_a_shard_count_discord_refuses_is_one_sentence(make_settings: Callable[..., Settings]) -> None:
    async with (
        DiscordEmulator(shards=2, max_concurrency=3) as discord_api,
        engine_on(sharded(discord_api, make_settings, 3)) as engine,
    ):
        with pytest.raises(SetupError) as refused:
            async with running(discord_api, engine):
                pass
    assert str(refused.value) == (
        "Discord refused the shard count (gateway close code 4010); set DISCORD_SHARD_COUNT to the number "
        "of shards the bot needs (GET /gateway/bot recommends one), the same on every instance"
    )
    assert 4010 in discord_api.closed_with


async def test_a_token_revoked_on_a_shard_stops_discord_in_one_sentence(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with on_shards(make_settings, 2, max_concurrency=2) as (discord_api, platform):
        await discord_api.close_gateway(4004)
        await asyncio.wait_for(platform.wait_closed(), 10)
    assert (
        "Discord stopped: Discord refused DISCORD_TOKEN on the gateway; reset the token in the developer "
        "portal; Parley can no longer receive messages there"
    ) in caplog.text


async def test_shards_dropped_by_the_gateway_identify_again_in_their_slots_and_still_answer(
    make_settings: Callable[..., Settings],
) -> None:
    async with on_shards(make_settings, 2, max_concurrency=2) as (discord_api, _platform):
        await discord_api.close_gateway(4000)  # resumable: each tries to RESUME, must IDENTIFY
        await until(lambda: len(discord_api.identifies) == 4, 20)
        await discord_api.send_message(ELSEWHERE, f"<@{BOT_ID}> back?", mentions=[MENTION])
        await until(
            lambda: [m["content"] for m in discord_api.messages_in(ELSEWHERE)] == ["echo: Alice: back?"]
        )
    assert discord_api.identify_refusals == []
    assert sorted(shard for shard, _at in discord_api.identifies) == [0, 0, 1, 1]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_shards_whose_leases_are_lost_are_closed_then_taken_again(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with DiscordEmulator(shards=2, max_concurrency=2) as discord_api:
        settings = sharded(discord_api, make_settings, 2).model_copy(
            update={"instance_heartbeat_seconds": 0.2}
        )
        async with engine_on(settings) as engine, running(discord_api, engine) as platform:
            assert platform._leases is not None and platform._leases._connection is not None
            connection = platform._leases._connection
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            terminate = text("SELECT pg_terminate_backend(:pid)").bindparams(pid=pid)
            await engine.store.write(lambda conn: conn.execute(terminate))  # as when the connection drops
            await until(lambda: len(discord_api.identifies) == 4, 20)
            await discord_api.send_message(GENERAL, f"<@{BOT_ID}> back?", mentions=[MENTION])
            await until(
                lambda: [m["content"] for m in discord_api.messages_in(GENERAL)] == ["echo: Alice: back?"]
            )
            assert sorted(platform.shards) == [0, 1]
    assert "Discord: lost the lease on shard 0; closing its connection" in caplog.text
    assert "Discord: lost the lease on shard 1; closing its connection" in caplog.text
    assert discord_api.identify_refusals == []


# Two `parley run` processes on one PostgreSQL


@contextlib.asynccontextmanager
async def instance(
    llm: LLMServer, tmp_path: Path, discord_api: DiscordEmulator, database_url: str, name: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    """One `parley run` with two shards, its log in a file of its own."""
    log = tmp_path / f"{name}.log"
    env = {
        "DISCORD_TOKEN": "discord-very-secret",
        "DISCORD_API_BASE": discord_api.api_base,
        "DISCORD_GATEWAY_URL": discord_api.gateway_url,
        "DISCORD_SHARD_COUNT": "2",
        "DATABASE_URL": database_url,
        "INSTANCE_HEARTBEAT_SECONDS": "0.3",
        "INSTANCE_TIMEOUT_SECONDS": "2",
        "PYTHONPATH": CHECKOUT,
    }
    with log.open("wb") as written:
        process = await spawn_parley(llm, tmp_path, "run", stderr=written, **env)
        try:
            yield process, log
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 60)


def holding(log: Path) -> set[int]:
    """The shards an instance holds now, by what its log said: connected, less those it gave up."""
    held: set[int] = set()
    for taken, given in re.findall(
        r"Discord: shard (\d) of 2 connected|Discord: giving shard (\d) up", log.read_text()
    ):
        if taken:
            held.add(int(taken))
        else:
            held.discard(int(given))
    return held


async def within(seconds: float, condition: Callable[[], bool], what: str, *logs: Path) -> None:
    try:
        await until(condition, seconds)
    except TimeoutError:
        said = "\n".join(f"--- {log.name}:\n{log.read_text()[-3000:]}" for log in logs)
        raise AssertionError(f"timed out waiting for {what}\n{said}") from None


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_instances_share_two_shards_and_one_takes_over_when_the_other_is_killed(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> None:
    async with (
        DiscordEmulator(shards=2, max_concurrency=2) as discord_api,
        instance(llm, tmp_path, discord_api, database_url, "a") as (a, a_log),
        instance(llm, tmp_path, discord_api, database_url, "b") as (b, b_log),
    ):
        # Whichever started first gives a shard up to the other: one each, each on its own session.
        await within(
            30,
            lambda: (
                holding(a_log) | holding(b_log) == {0, 1}
                and len(holding(a_log)) == len(holding(b_log)) == 1
                and discord_api.sessions_on(0) == discord_api.sessions_on(1) == 1
            ),
            "one shard on each instance",
            a_log,
            b_log,
        )
        await discord_api.send_message(GENERAL, f"<@{BOT_ID}> zero?", mentions=[MENTION])
        await discord_api.send_message(ELSEWHERE, f"<@{BOT_ID}> one?", mentions=[MENTION])
        await within(
            20,
            lambda: (
                [m["content"] for m in discord_api.messages_in(GENERAL)] == ["echo: Alice: zero?"]
                and [m["content"] for m in discord_api.messages_in(ELSEWHERE)] == ["echo: Alice: one?"]
            ),
            "an answer on each shard",
        )
        holder, survivor_log = (a, b_log) if 0 in holding(a_log) else (b, a_log)
        holder.kill()  # kill -9: no goodbye, its database connection (and its leases) just close
        await holder.wait()
        await within(
            20, lambda: holding(survivor_log) == {0, 1}, "the survivor to take shard 0", survivor_log
        )
        await within(10, lambda: discord_api.sessions_on(0) == 1, "shard 0's new session")
        await discord_api.send_message(GENERAL, f"<@{BOT_ID}> still there?", mentions=[MENTION])
        await discord_api.send_message(DM_CHANNEL, "and in private?", guild=False)  # DMs: shard 0
        await within(
            20,
            lambda: (
                [m["content"] for m in discord_api.messages_in(GENERAL)][-1:] == ["echo: Alice: still there?"]
                and [m["content"] for m in discord_api.messages_in(DM_CHANNEL)]
                == ["echo: Alice: and in private?"]
            ),
            "the survivor's answers on shard 0",
        )
        survivor = b if holder is a else a
    assert survivor.returncode == 0, survivor_log.read_text()[-3000:]
    assert discord_api.identify_refusals == []  # every IDENTIFY in its bucket's slot, across instances
    syncs = [c for c in discord_api.calls if c.method == "PUT" and c.path.endswith("/commands")]
    assert len(syncs) == 1  # by the leader only
    assert "Traceback" not in survivor_log.read_text()
