"""`parley run` processes on a throwaway PostgreSQL, started the same way by every multi-instance bench."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import postgres
from tests.support.llm_server import LLMServer
from tests.support.slack_api import SlackAPI

CHECKOUT = str(Path(__file__).resolve().parents[1])
SECRET = "bench-secret"  # the Slack app's signing secret


@contextmanager
def postgres_server() -> Iterator[str]:
    """PARLEY_TEST_POSTGRES_URL, else a cluster of this machine's binaries that is removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="parley-bench-pg-"))
    server = os.environ.get("PARLEY_TEST_POSTGRES_URL") or postgres.start(folder)
    try:
        yield server
    finally:
        postgres.stop(folder)


def free_base(count: int) -> int:
    """A port from which `count` more fit below 65536 (`--workers` serves on PORT, PORT+1, …)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = int(probe.getsockname()[1])
    return base if base + count < 65536 else free_base(count)


def environment(home: Path, llm: LLMServer, database: str, **settings: str) -> dict[str, str]:
    """Only what the run needs, so the caller's own settings and `.env` play no part."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": CHECKOUT,
        "HOME": str(home),
        "OPENROUTER_API_KEY": "sk-bench",
        "OPENROUTER_BASE_URL": llm.openai_base_url,
        "DATABASE_URL": database,
        **settings,
    }


def slack_app(slack: SlackAPI, port: int) -> dict[str, str]:
    """Settings for Slack's HTTP events served on `port` (and the ports after it, one per worker)."""
    return {
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.api_url,
        "PORT": str(port),
    }


async def start(home: Path, env: dict[str, str], *args: str, **options: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", *args, cwd=home, env=env, **options
    )


async def until_serving(base: int, count: int) -> None:
    """Until each of the `count` ports from `base` accepts a connection: every worker is up."""
    for port in range(base, base + count):
        while True:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
            else:
                writer.close()
                break


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, as a deployment stops Parley, unless the process has already gone."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        await process.wait()
