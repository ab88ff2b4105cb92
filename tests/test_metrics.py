"""/healthz and /metrics for operators: on METRICS_PORT under `parley run`, and when the store is down."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from bot.metrics import Health, Metrics, serve
from bot.sqlite_worker import SQLiteWorker
from bot.store import Store
from tests.support.cli import CHECKOUT, environment, spawn_parley
from tests.support.llm_server import LLMServer
from tests.support.slack_api import BOT_USER, SlackAPI, SlackUser
from tests.support.slack_harness import channel_event

ALICE = SlackUser("UALICE", "Alice")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_parley_run_serves_health_and_metrics_on_metrics_port(llm: LLMServer, tmp_path: Path) -> None:
    port = free_port()
    async with SlackAPI(users={ALICE.id: ALICE}) as slack:
        env = {
            "SLACK_BOT_TOKEN": slack.bot_token,
            "SLACK_APP_TOKEN": slack.app_token,  # Socket Mode: no PORT of its own
            "SLACK_API_URL": slack.api_url,
            "METRICS_PORT": str(port),
            "PYTHONPATH": CHECKOUT,
        }
        process = await spawn_parley(llm, tmp_path, "run", **env)
        try:
            health = await _until_healthy(f"http://127.0.0.1:{port}/healthz")
            assert health == '{"status": "ok", "store": "up", "platforms": {"slack": "up"}}'
            await asyncio.wait_for(
                slack.send_socket_event(channel_event(f"<@{BOT_USER}> hi", "C1", "1700000010.1")), 30
            )
            scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            replied = ("parley_replies_total", (("outcome", "ok"), ("platform", "slack")))
            for _ in range(600):  # up to 30 s on a busy machine
                status, text = await get(f"http://127.0.0.1:{port}/metrics")
                assert status == 200
                scraped = {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                }
                if scraped.get(replied):
                    break
                await asyncio.sleep(0.05)
            assert scraped[replied] == 1
            assert scraped[
                (
                    "parley_tokens_total",
                    (("kind", "completion"), ("model", "openrouter/xiaomi/mimo-v2-flash")),
                )
            ]
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()


async def test_a_metrics_port_in_use_stops_parley_run_with_one_line(llm: LLMServer, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"SLACK_BOT_TOKEN": "xoxb-x", "SLACK_APP_TOKEN": "xapp-x", "METRICS_PORT": str(port)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            cwd=tmp_path,
            env=environment(llm, tmp_path, PYTHONPATH=CHECKOUT, **env),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert err.decode().strip().splitlines()[-1] == (
        f"error: could not serve /metrics and /healthz on METRICS_PORT {port} (another program uses it)"
    )


async def test_healthz_says_when_the_store_is_down_and_metrics_are_still_served() -> None:
    refused = SQLiteWorker(create_engine("sqlite://", creator=_refused), "refused", "BEGIN")
    down = Store("sqlite", writer=refused)
    health = Health()
    health.up("discord")
    runner = await serve(down, Metrics(), health, 0, host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        status, body = await get(f"{base}/healthz")
        assert (status, body) == (
            503,
            '{"status": "unhealthy", "store": "down", "platforms": {"discord": "up"}}',
        )
        status, text = await get(f"{base}/metrics")
        families = list(text_string_to_metric_families(text))
        assert status == 200
        assert not [s for f in families if f.name == "parley_replies" for s in f.samples]  # none counted yet
        assert {family.name for family in families} >= {
            "parley_replies",
            "parley_inbox_pending",
            "parley_active_streams",
        }
    finally:
        await runner.cleanup()
        await down.close()


async def _until_healthy(url: str) -> str:
    for _ in range(600):
        try:
            status, body = await get(url)
        except aiohttp.ClientConnectionError:
            status, body = 0, ""
        if status == 200:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never said healthy")


def _refused() -> None:
    """A database server that is down: every connection is refused."""
    raise ConnectionRefusedError(111, "Connection refused")
