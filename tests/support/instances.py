"""`parley run --workers 3` on one PostgreSQL, serving Slack's HTTP events: what the tests of several
instances start, wait for and deliver to."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.balancer import Balancer
from tests.support.cli import CHECKOUT, spawn_parley
from tests.support.llm_server import LLMServer
from tests.support.slack_api import BOT_USER, TEAM, SlackAPI, SlackUser, signed_headers

ALICE = SlackUser("UALICE", "Alice")
SECRET = "shh-signing-secret"
WORKERS = 3
on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


async def until(condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


EPHEMERAL_PORTS_START = 32768


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports.

    They are free when probed, and the workers bind them a moment later; below Linux's ephemeral range
    (32768–60999), no outgoing connection of another process is handed one of them in between."""
    while True:
        base = random.randrange(20000, EPHEMERAL_PORTS_START - count)
        sockets = []
        try:
            for port in range(base, base + count):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()


async def accepting(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


@asynccontextmanager
async def workers(
    llm: LLMServer, tmp_path: Path, slack: SlackAPI, database_url: str, base: int, **settings: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.api_url,
        "SLACK_RENDER_INTERVAL": "0.05",
        "DATABASE_URL": database_url,
        "PORT": str(base),
        "INSTANCE_HEARTBEAT_SECONDS": "0.3",
        "INSTANCE_TIMEOUT_SECONDS": "2",
        "PYTHONPATH": CHECKOUT,
        **settings,
    }
    process = await spawn_parley(llm, tmp_path, "run", "--workers", str(WORKERS), **env)
    try:

        async def all_serving() -> bool:
            if process.returncode is not None:  # a worker refused its start: fail now, not in a minute
                raise AssertionError(f"parley run exited at start with status {process.returncode}")
            return all([await accepting(base + k) for k in range(WORKERS)])

        await until(all_serving, "three workers serving Slack's events")
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()[-3000:]


class Deliveries:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url

    async def post(self, payload: dict[str, Any], *, retry: int = 0, url: str | None = None) -> int:
        body = json.dumps(payload)
        headers = {"Content-Type": "application/json", **signed_headers(body, SECRET)}
        if retry:
            headers["X-Slack-Retry-Num"] = str(retry)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        async with self.http.post(url or f"{self.url}/slack/events", data=body, headers=headers) as answer:
            return answer.status


@asynccontextmanager
async def behind_a_balancer(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[SlackAPI, Balancer, Deliveries]]:
    """The loopback Slack with Alice in it, and `workers` serving its events behind the round-robin
    balancer that Slack's deliveries go to."""
    base = free_ports(WORKERS)
    async with (
        SlackAPI(users={ALICE.id: ALICE}) as slack,
        workers(llm, tmp_path, slack, database_url, base),
        Balancer([base + k for k in range(WORKERS)]) as balancer,
        aiohttp.ClientSession() as http,
    ):
        yield slack, balancer, Deliveries(http, balancer.url)


def mention(
    slack: SlackAPI, channel: str, text: str, event_id: str, thread_ts: str | None = None
) -> dict[str, Any]:
    """Alice mentions Parley in `channel` (in a thread when given): the event Slack sends."""
    said = slack.say(ALICE.id, channel, f"<@{BOT_USER}> {text}", thread_ts=thread_ts)
    event = {"type": "app_mention", "user": ALICE.id, "text": said.text, "ts": said.ts, "channel": channel}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {
        "type": "event_callback",
        "team_id": TEAM,
        "api_app_id": "A1",
        "event_id": event_id,
        "event_time": int(time.time()),
        "event": {**event, "team": TEAM},
    }
