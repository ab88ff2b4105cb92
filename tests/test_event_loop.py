"""`parley run` serves on uvloop when it is installed (the `uvloop` extra), else on asyncio's own loop,
and says which in its first log line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bot.cli import event_loop
from tests.support.cli import environment
from tests.support.llm_server import LLMServer
from tests.support.slack_api import SlackAPI

ROOT = Path(__file__).resolve().parents[1]


def test_uvloop_is_used_when_it_can_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop  # the dev extra installs it

    assert event_loop() == ("uvloop", uvloop.new_event_loop)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert event_loop() == ("asyncio", None)


async def first_log_line(llm: LLMServer, cwd: Path, pythonpath: str) -> str:
    """`parley run` against a Slack that refuses the token: it logs its start line, then stops."""
    async with SlackAPI() as slack:
        slack.fail["auth.test"] = "invalid_auth"
        env = environment(
            llm,
            cwd,
            PYTHONPATH=pythonpath,
            SLACK_BOT_TOKEN="xoxb-test",
            SLACK_APP_TOKEN="xapp-test",
            SLACK_API_URL=slack.api_url,
            LOG_LEVEL="INFO",
        )
        quiet, piped = asyncio.subprocess.DEVNULL, asyncio.subprocess.PIPE
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", cwd=cwd, env=env, stdin=quiet, stdout=quiet, stderr=piped
        )
        _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1, err.decode()
    return next(line for line in err.decode().splitlines() if "Parley " in line and "event loop" in line)


async def test_parley_run_says_which_event_loop_it_serves_on(llm: LLMServer, tmp_path: Path) -> None:
    line = await first_log_line(llm, tmp_path, str(ROOT))
    assert line.endswith("; event loop uvloop")
    hidden = tmp_path / "without-uvloop"
    (hidden / "uvloop").mkdir(parents=True)
    (hidden / "uvloop" / "__init__.py").write_text("raise ImportError('not installed here')\n")
    line = await first_log_line(llm, tmp_path, f"{hidden}:{ROOT}")
    assert line.endswith("; event loop asyncio")
