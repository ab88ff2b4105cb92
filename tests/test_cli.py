"""The `parley` command as a user runs it: a subprocess talking to the loopback provider."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
from pathlib import Path

import pytest

from bot.cli import main
from tests.support.cli import parley, spawn_parley
from tests.support.discord_emulator import DiscordEmulator
from tests.support.llm_server import LLMServer, Script
from tests.support.slack_api import BOT_USER, TEAM, SlackAPI


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
    assert (code, err) == (
        2,
        "error: REPLY_MAX_TOKENS (set in the environment) must be a whole number, not 'lots'.\n",
    )
    (workdir / "blocker").write_text("a file where the database folder should be")
    code, out, _ = await parley(
        llm, workdir, "check", DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/blocker/x.db"
    )
    assert code == 1
    assert (
        f"problem  database: {workdir}/blocker is a file, so Parley cannot keep its database "
        f"{workdir}/blocker/x.db there\n"
    ) in out


async def test_run_says_in_one_line_when_a_platform_refuses_its_token(llm: LLMServer, workdir: Path) -> None:
    async with SlackAPI() as slack, DiscordEmulator() as discord_api:
        slack.fail["auth.test"] = "invalid_auth"
        slack_env = {"SLACK_BOT_TOKEN": "xoxb-very-secret", "SLACK_API_URL": slack.api_url}
        code, _out, err = await parley(llm, workdir, "run", SLACK_APP_TOKEN="xapp-1", **slack_env)
        assert (code, err.splitlines()[-1]) == (
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
        process = await spawn_parley(llm, workdir, "run", **slack_env)
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


# Setup mistakes: one sentence each, never a traceback


async def test_version_and_where_settings_come_from(llm: LLMServer, workdir: Path) -> None:
    code, out, _ = await parley(llm, workdir, "--version")
    assert code == 0 and out.startswith("parley 0.")
    code, out, _ = await parley(llm, workdir, "run", "--help")
    assert code == 0
    for expected in ("environment variables, then .env, then parley.toml", "PARLEY_HOME", "PARLEY_CONFIG"):
        assert expected in " ".join(out.split())
    assert "settings tables of README.md" in " ".join(out.split())


@pytest.mark.parametrize(
    ("env", "files", "sentence"),
    [
        (
            {},
            {"parley.toml": 'default_model = "a"\n[providers.lm\n'},
            "error: {cwd}/parley.toml has a syntax error at line 2, column 14: "
            "expected ']' at the end of a table declaration.",
        ),
        (
            {"DATABASE_URL": "sqlite:///data/parley.db"},
            {},
            "error: DATABASE_URL (set in the environment) uses the synchronous pysqlite driver; Parley "
            "needs an asynchronous one: sqlite+aiosqlite:///data/parley.db.",
        ),
    ],
)
async def test_a_setup_mistake_is_one_sentence_and_exit_2_for_every_command(
    llm: LLMServer, workdir: Path, env: dict[str, str], files: dict[str, str], sentence: str
) -> None:
    for name, text in files.items():
        (workdir / name).write_text(text)
    commands = ("run", "chat", "check", "models")
    results = await asyncio.gather(*(parley(llm, workdir, command, **env) for command in commands))
    for code, out, err in results:
        assert (code, out, err) == (2, "", sentence.format(cwd=workdir) + "\n")


@pytest.mark.parametrize(
    ("command", "env", "files", "sentence"),
    [
        (
            "run",
            {"PARLEY_CONFIG": "settings/parley.toml"},
            {},
            "error: PARLEY_CONFIG names {cwd}/settings/parley.toml, which does not exist.",
        ),
        (
            "chat",
            {"LOG_LEVEL": "loud"},
            {},
            "error: LOG_LEVEL (set in the environment) must be one of DEBUG, INFO, WARNING, ERROR, "
            "CRITICAL, not 'loud'.",
        ),
        (
            "check",
            {},
            {".env": "MAX_RETRIES=several\n"},
            "error: MAX_RETRIES (set in {cwd}/.env) must be a whole number, not 'several'.",
        ),
        (
            "run",
            {"DATABASE_URL": "parley.db"},
            {},
            "error: DATABASE_URL (set in the environment) is not a database URL; write it like "
            "sqlite+aiosqlite:///data/parley.db or postgresql+asyncpg://USER:PASSWORD@HOST/DB.",
        ),
    ],
)
def test_more_setup_mistakes_in_one_sentence(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    env: dict[str, str],
    files: dict[str, str],
    sentence: str,
) -> None:
    """The same `main` in this process: settings are refused before anything starts."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name not in ("PATH", "HOME"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main([command]) == 2
    assert capsys.readouterr() == ("", sentence.format(cwd=tmp_path) + "\n")


async def test_a_database_parley_cannot_write_is_one_sentence_and_exit_1(
    llm: LLMServer, workdir: Path
) -> None:
    data = workdir / "data"
    data.mkdir(mode=0o555)  # pytest's clean-up of tmp_path gives the write permission back
    url = {"DATABASE_URL": f"sqlite+aiosqlite:///{data}/parley.db"}
    folder_sentence = (
        f"Parley cannot write its database in {data} (unable to open database file); "
        "set PARLEY_HOME or DATABASE_URL to a folder it can write to"
    )
    for command in ("run", "chat"):
        code, _out, err = await parley(llm, workdir, command, unprivileged=True, DISCORD_TOKEN="t", **url)
        assert (code, err.splitlines()[-1]) == (1, f"error: {folder_sentence}")
        assert "Traceback" not in err
    code, out, err = await parley(llm, workdir, "check", unprivileged=True, **url)
    assert code == 1 and f"problem  database: {folder_sentence}\n" in out
    os.chmod(data, 0o755)
    code, _out, err = await parley(llm, workdir, "check", **url)  # creates the database
    assert code == 0, err
    for name in os.listdir(data):
        os.chmod(data / name, 0o444)
    read_only = f"the database file {data}/parley.db is read-only; Parley must be able to write to it"
    for command in ("run", "chat"):
        code, _out, err = await parley(llm, workdir, command, unprivileged=True, DISCORD_TOKEN="t", **url)
        assert (code, err.splitlines()[-1]) == (1, f"error: {read_only}")
    code, out, err = await parley(llm, workdir, "check", unprivileged=True, **url)
    assert code == 1 and f"problem  database: {read_only}\n" in out


async def test_misspelt_names_warn_in_chat_and_are_problems_in_check(llm: LLMServer, workdir: Path) -> None:
    (workdir / "parley.toml").write_text('[provider.lm]\nbase_url = "http://127.0.0.1:9/v1"\n')
    env = {"DEFUALT_MODEL": "openrouter/openai/gpt-4o-mini", "OPENROUTER_APIKEY": "sk-or-v1-typo"}
    warnings = [
        "DEFUALT_MODEL in the environment is not a setting; did you mean DEFAULT_MODEL?",
        "OPENROUTER_APIKEY in the environment is not a setting; did you mean OPENROUTER_API_KEY?",
        f"[provider] in {workdir}/parley.toml is not a setting; did you mean [providers]?",
    ]
    code, out, err = await parley(llm, workdir, "chat", stdin="hi\n", **env)
    assert code == 0 and out == f"echo: {getpass.getuser()}: hi\n"
    assert [
        line.split(" WARNING bot.cli: ")[-1] for line in err.splitlines() if "WARNING" in line
    ] == warnings
    code, out, _err = await parley(llm, workdir, "check", **env)
    assert code == 1
    assert [line for line in out.splitlines() if line.startswith("problem")] == [
        f"problem  {warning}" for warning in warnings
    ]


# `parley check` tells the truth


async def test_check_agrees_with_chat_about_a_bare_default_model(llm: LLMServer, workdir: Path) -> None:
    llm.models.append({"id": "fake-small", "context_length": 8192})
    code, out, err = await parley(llm, workdir, "check", DEFAULT_MODEL="fake-small")
    assert code == 0, out + err
    assert "ok       default model fake-small (openrouter/fake-small)\n" in out
    code, out, err = await parley(llm, workdir, "chat", stdin="hi\n", DEFAULT_MODEL="fake-small")
    assert (code, out) == (0, f"echo: {getpass.getuser()}: hi\n"), err
    assert llm.chat_requests()[-1].json["model"] == "fake-small"
    unknown = "Unknown model fake-smal. Did you mean openrouter/fake-small?"
    code, out, _ = await parley(llm, workdir, "check", DEFAULT_MODEL="fake-smal")
    assert code == 1 and f"problem  default model: {unknown}\n" in out
    code, out, _ = await parley(llm, workdir, "chat", stdin="hi\n", DEFAULT_MODEL="fake-smal")
    assert out == f"_{unknown}_\n"


async def test_check_names_fallbacks_it_cannot_find(llm: LLMServer, workdir: Path) -> None:
    (workdir / "parley.toml").write_text(
        "[fallbacks]\n"
        '"openrouter/xiaomi/mimo-v2-flash" = ["openrouter/openai/gpt-4o-mini", "openai/gpt-4o-mini"]\n'
        '"openrouter/openai/gpt-4o-mini" = ["openrouter/openai/gpt-5-mini"]\n'
    )
    code, out, _ = await parley(llm, workdir, "check")
    assert code == 1
    assert (
        "ok       fallbacks for openrouter/xiaomi/mimo-v2-flash: openrouter/xiaomi/mimo-v2-flash → "
        "openrouter/openai/gpt-4o-mini → openai/gpt-4o-mini (openrouter/openai/gpt-4o-mini)\n"
    ) in out
    assert (
        "problem  fallbacks for openrouter/openai/gpt-4o-mini: Unknown model openrouter/openai/gpt-5-mini. "
        "Did you mean openrouter/openai/gpt-4o-mini?\n"
    ) in out


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_check_asks_discord_and_slack_about_their_tokens(llm: LLMServer, workdir: Path) -> None:
    async with DiscordEmulator(token="discord-check-token") as discord_api, SlackAPI() as slack:
        discord_env = {"DISCORD_TOKEN": "discord-check-token", "DISCORD_API_BASE": discord_api.api_base}
        slack_env = {
            "SLACK_BOT_TOKEN": slack.bot_token,
            "SLACK_APP_TOKEN": slack.app_token,
            "SLACK_API_URL": slack.api_url,
        }
        code, out, err = await parley(llm, workdir, "check", **discord_env, **slack_env)
        assert code == 0, out + err
        assert out.splitlines()[-4:] == [
            "ok       Discord: DISCORD_TOKEN accepted for parley (id 100000000000000900)",
            "ok       Discord: the Message Content intent is on",
            "ok       Slack: SLACK_BOT_TOKEN accepted for parley in Loopback",
            "ok       Slack: SLACK_APP_TOKEN accepted; Socket Mode can connect",
        ]
        discord_env["DISCORD_TOKEN"] = "discord-wrong-token"
        slack_env["SLACK_APP_TOKEN"] = slack.bot_token  # the bot token where the app-level one belongs
        code, out, err = await parley(llm, workdir, "check", **discord_env, **slack_env)
        assert code == 1
        assert out.splitlines()[-3:] == [
            "problem  Discord refused DISCORD_TOKEN; reset the token in the developer portal",
            "ok       Slack: SLACK_BOT_TOKEN accepted for parley in Loopback",
            "problem  Slack refused SLACK_APP_TOKEN (not_allowed_token_type); it must be an app-level "
            "token (xapp-…) with the connections:write scope",
        ]
        assert "wrong-token" not in out + err
    async with DiscordEmulator(token="t", message_content=False) as discord_api, SlackAPI() as slack:
        code, out, _ = await parley(
            llm,
            workdir,
            "check",
            DISCORD_TOKEN="t",
            DISCORD_API_BASE=discord_api.api_base,
            SLACK_BOT_TOKEN="xoxb-revoked",
            SLACK_SIGNING_SECRET="s3cret",
            SLACK_API_URL=slack.api_url,
        )
        assert code == 1
        assert out.splitlines()[-4:] == [
            "ok       Discord: DISCORD_TOKEN accepted for parley (id 100000000000000900)",
            "problem  Discord: the Message Content intent is off, so mentions arrive without their text; "
            "turn it on under Bot → Privileged Gateway Intents in the developer portal",
            "problem  Slack refused SLACK_BOT_TOKEN (invalid_auth); check it in the app's settings",
            "ok       Slack: HTTP mode, events expected at /slack/events on port 3000",
        ]
    nowhere = f"http://127.0.0.1:{_closed_port()}"
    code, out, _ = await parley(
        llm,
        workdir,
        "check",
        DISCORD_TOKEN="t",
        DISCORD_API_BASE=f"{nowhere}/api/v10",
        SLACK_BOT_TOKEN="xoxb-1",
        SLACK_API_URL=f"{nowhere}/api/",
    )
    assert code == 1
    assert out.splitlines()[-3:] == [
        f"problem  could not reach Discord at {nowhere}/api/v10 (ConnectError)",
        f"problem  could not reach Slack at {nowhere}/api/ (ConnectError)",
        "problem  Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)",
    ]


# Where things are, and what is logged


async def test_parley_home_keeps_memory_wherever_parley_is_started(llm: LLMServer, workdir: Path) -> None:
    home = workdir / "home"
    (home / "elsewhere").mkdir(parents=True)
    (home / ".env").write_text("DEFAULT_MODEL=openrouter/openai/gpt-4o-mini\n")
    # The default database, under the home; `parley chat` logs where things are only when asked to.
    env = {"PARLEY_HOME": str(home), "DATABASE_URL": "", "LOG_LEVEL": "INFO"}
    code, _out, err = await parley(llm, workdir, "chat", stdin="Remember 42.\n", **env)
    assert code == 0, err
    assert (
        f"settings from the environment, then {home}/.env, then {home}/parley.toml (none there); "
        f"memory in SQLite file {home}/data/parley.db"
    ) in err
    code, _out, err = await parley(llm, home / "elsewhere", "chat", stdin="What was it?\n", **env)
    assert code == 0, err
    sent = llm.chat_requests()[-1].json
    assert sent["model"] == "openai/gpt-4o-mini"
    assert sent["messages"][1]["content"].endswith("Remember 42.")
    assert not (workdir / "data").exists() and not (home / "elsewhere" / "data").exists()


async def test_parley_chat_keeps_info_lines_off_a_scripts_stderr_unless_asked(
    llm: LLMServer, workdir: Path
) -> None:
    code, out, err = await parley(llm, workdir, "chat", stdin="hello\n")
    assert code == 0 and out.startswith("echo: ") and out.endswith(": hello\n")
    assert err == ""  # no start line, no reply line: those are for an operator's log


async def test_json_logs_one_object_a_line_with_each_reply_and_no_secret(
    llm: LLMServer, workdir: Path
) -> None:
    code, out, err = await parley(
        llm, workdir, "chat", stdin="a private thought\n", LOG_FORMAT="json", LOG_LEVEL="INFO"
    )
    assert code == 0 and out.startswith("echo:")
    entries = [json.loads(line) for line in err.splitlines()]
    start, reply = entries[0], entries[-1]
    assert (
        start["logger"] == "bot.cli" and f"memory in SQLite file {workdir}/data/parley.db" in start["message"]
    )
    assert {k: reply[k] for k in ("event", "platform", "conversation", "model", "outcome")} == {
        "event": "reply",
        "platform": "console",
        "conversation": "console:default",
        "model": "openrouter/xiaomi/mimo-v2-flash",
        "outcome": "ok",
    }
    assert (reply["prompt_tokens"], reply["completion_tokens"]) == (12, 3)
    assert "private thought" not in err and "sk-or-v1-cli-secret" not in err
