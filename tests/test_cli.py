"""The `parley` command as a user runs it: a subprocess talking to the loopback provider."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from pathlib import Path

import pytest

from tests.support.discord_emulator import DiscordEmulator
from tests.support.llm_server import LLMServer, Script
from tests.support.slack_api import BOT_USER, TEAM, SlackAPI


def environment(llm: LLMServer, cwd: Path, **env: str) -> dict[str, str]:
    """What `parley` runs with: the loopback provider, a database under `cwd`, no inherited settings."""
    values = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "HOME": str(cwd),
        "OPENROUTER_API_KEY": "sk-or-v1-cli-secret",
        "OPENROUTER_BASE_URL": llm.openai_base_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{cwd}/data/parley.db",
        **env,
    }
    return {k: v for k, v in values.items() if v}


async def parley(llm: LLMServer, cwd: Path, *args: str, stdin: str = "", **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=environment(llm, cwd, **env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The subprocess must import this checkout, whatever directory it runs in.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    return tmp_path


async def test_chat_from_a_pipe_streams_replies_and_remembers_across_runs(
    llm: LLMServer, workdir: Path
) -> None:
    user = getpass.getuser()
    code, out, err = await parley(
        llm, workdir, "chat", "--channel", "demo", stdin="My name is Ada.\n/model\n\nWhat is my name?\n"
    )
    assert code == 0, err
    assert out.splitlines() == [
        f"echo: {user}: My name is Ada.",
        "This channel uses openrouter/xiaomi/mimo-v2-flash (context 262,144 tokens).",
        f"echo: {user}: What is my name?",
    ]
    code, out, err = await parley(llm, workdir, "chat", "--channel", "demo", stdin="Still there?\n")
    assert code == 0, err
    history = [m["content"] for m in llm.chat_requests()[-1].json["messages"][1:]]
    assert history[0] == f"{user}: My name is Ada." and history[-1] == f"{user}: Still there?"
    assert len(history) == 5
    code, out, err = await parley(llm, workdir, "chat", "--channel", "elsewhere", stdin="Fresh?\n")
    assert [m["role"] for m in llm.chat_requests()[-1].json["messages"]] == ["system", "user"]
    assert "sk-or-v1-cli-secret" not in err


async def test_chat_shows_a_provider_failure_as_one_line_and_goes_on(llm: LLMServer, workdir: Path) -> None:
    llm.enqueue(Script(status=401), Script(tokens=["back"]))
    code, out, err = await parley(llm, workdir, "chat", stdin="one\ntwo\n")
    assert code == 1  # a script can tell that a reply failed
    assert out.splitlines() == ["_The openrouter API key was rejected; an admin needs to check it._", "back"]
    assert "sk-or-v1-cli-secret" not in out + err


async def test_run_without_a_platform_says_what_to_set(llm: LLMServer, workdir: Path) -> None:
    code, _out, err = await parley(llm, workdir, "run")
    assert code == 2
    for expected in (
        "DISCORD_TOKEN",
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "parley chat",
    ):
        assert expected in err


async def test_chat_without_a_provider_says_what_to_set(llm: LLMServer, workdir: Path) -> None:
    code, _out, err = await parley(llm, workdir, "chat", OPENROUTER_API_KEY="")
    assert code == 2 and "set OPENROUTER_API_KEY" in err


async def test_models_lists_and_filters(llm: LLMServer, workdir: Path) -> None:
    code, out, _ = await parley(llm, workdir, "models")
    assert code == 0
    assert out.splitlines() == ["openrouter/openai/gpt-4o-mini", "openrouter/xiaomi/mimo-v2-flash"]
    code, out, _ = await parley(llm, workdir, "models", "mimo")
    assert out.splitlines() == ["openrouter/xiaomi/mimo-v2-flash"]


async def test_check_reports_one_line_per_finding(llm: LLMServer, workdir: Path) -> None:
    code, out, _ = await parley(llm, workdir, "check")
    assert code == 0, out
    assert "ok       provider openrouter: reachable, 2 models" in out
    assert "ok       default model openrouter/xiaomi/mimo-v2-flash" in out
    llm.models_error = Script(status=401)
    code, out, err = await parley(llm, workdir, "check", DEFAULT_MODEL="openrouter/nope")
    assert code == 1
    assert (
        "problem  provider openrouter: The openrouter API key was rejected; an admin needs to check it."
        in out
    )
    assert "sk-or-v1-cli-secret" not in out + err


async def test_check_flags_a_bad_setting_and_a_bad_database(llm: LLMServer, workdir: Path) -> None:
    code, _out, err = await parley(llm, workdir, "check", REPLY_MAX_TOKENS="lots")
    assert code == 2 and err.startswith("config: reply_max_tokens:")
    (workdir / "blocker").write_text("a file where the database folder should be")
    code, out, _ = await parley(
        llm, workdir, "check", DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/blocker/x.db"
    )
    assert code == 1 and "problem  database:" in out


async def test_run_says_in_one_line_when_a_platform_refuses_its_token(llm: LLMServer, workdir: Path) -> None:
    async with SlackAPI() as slack, DiscordEmulator() as discord_api:
        slack.fail["auth.test"] = "invalid_auth"
        slack_env = {"SLACK_BOT_TOKEN": "xoxb-very-secret", "SLACK_API_URL": slack.api_url}
        code, _out, err = await parley(llm, workdir, "run", SLACK_APP_TOKEN="xapp-1", **slack_env)
        assert (code, err.strip()) == (
            1,
            "error: Slack refused SLACK_BOT_TOKEN (invalid_auth); check it in the app's settings",
        )
        code, _out, err = await parley(llm, workdir, "run", **slack_env)  # neither mode configured
        assert code == 1 and "Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET" in err
        discord_api.fail_next("GET", "/users/@me", 401)
        discord_env = {
            "DISCORD_API_BASE": discord_api.api_base,
            "DISCORD_GATEWAY_URL": discord_api.gateway_url,
        }
        code, _out, err = await parley(
            llm, workdir, "run", DISCORD_TOKEN="discord-very-secret", **discord_env
        )
        assert code == 1 and err.strip().endswith(
            "error: Discord refused DISCORD_TOKEN; reset the token in the developer portal"
        )
    assert "Traceback" not in err and "very-secret" not in err


async def test_run_serves_slack_over_socket_mode_until_terminated(llm: LLMServer, workdir: Path) -> None:
    async with SlackAPI() as slack:
        slack_env = {
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_APP_TOKEN": "xapp-test",
            "SLACK_API_URL": slack.api_url,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            cwd=workdir,
            env=environment(llm, workdir, **slack_env),
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            event = {
                "type": "app_mention",
                "user": "U1",
                "text": f"<@{BOT_USER}> hello",
                "ts": "1700000001.1",
            }
            event |= {"channel": "C1", "team": TEAM}
            await asyncio.wait_for(
                slack.send_socket_event({"type": "event_callback", "event_id": "Ev1", "event": event}), 30
            )
            async with asyncio.timeout(30):
                while not any(m.text == "echo: U1: hello" and not m.streaming for m in slack.replies("C1")):
                    await asyncio.sleep(0.05)
        finally:
            process.terminate()
            _out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0 and "Parley stopped." in err.decode()
