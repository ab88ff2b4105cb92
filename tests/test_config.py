"""Configuration from the environment, .env and TOML; its mistakes in one sentence; logs that never show a
secret; and the documentation of every setting."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import pytest

from bot.config import DEFAULT_MODEL, ConfigError, Settings
from bot.database_url import describe_database
from bot.logs import JsonFormatter, RedactingFormatter, configure_logging, log_event, secrets_of
from bot.settings_loader import load_settings

ROOT = Path(__file__).resolve().parents[1]
TOML_ONLY = {"providers", "fallbacks", "budgets", "access", "preset_extras"}  # tables, in parley.toml
LOCATIONS = {"PARLEY_HOME", "PARLEY_CONFIG"}  # environment only: they say where the rest is read from


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own and an environment with nothing of this machine's in it."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name not in ("PATH", "HOME", "TMPDIR"):
            monkeypatch.delenv(name)
    return tmp_path


def problems() -> list[str]:
    with pytest.raises(ConfigError) as refused:
        load_settings()
    return refused.value.problems


def test_defaults_need_nothing_and_activate_no_provider(isolated: Path) -> None:
    settings = Settings()
    assert settings.default_model == DEFAULT_MODEL == "openrouter/xiaomi/mimo-v2-flash"
    assert settings.database_url == f"sqlite+aiosqlite:///{isolated}/data/parley.db"
    assert settings.provider_settings() == {}
    assert (settings.log_level, settings.log_format) == ("INFO", "text")


def test_presets_activate_from_keys_in_dotenv(isolated: Path) -> None:
    (isolated / ".env").write_text(
        "OPENROUTER_API_KEY=sk-or-abc\nOLLAMA_BASE_URL=http://localhost:11434/v1\n"
    )
    providers = Settings().provider_settings()
    assert sorted(providers) == ["ollama", "openrouter"]
    assert providers["openrouter"].key() == "sk-or-abc"
    assert providers["ollama"].key() is None


def test_toml_custom_providers_and_env_overrides(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = isolated / "elsewhere.toml"
    config.write_text(
        'default_model = "local/qwen3"\n'
        "[providers.local]\n"
        'base_url = "http://127.0.0.1:8080/v1"\n'
        'api_key_env = "LOCAL_KEY"\n'
        'models = ["qwen3"]\n'
        "[providers.local.context_length]\n"
        "qwen3 = 32768\n"
        "[providers.claude]\n"
        'base_url = "http://127.0.0.1:9000"\n'
        'api = "anthropic"\n'
        'api_key = "direct-key"\n'
    )
    monkeypatch.setenv("PARLEY_CONFIG", str(config))
    monkeypatch.setenv("LOCAL_KEY", "from-env")
    settings = Settings()
    assert settings.default_model == "local/qwen3"
    local = settings.provider_settings()["local"]
    assert (local.key(), local.models, local.context_length) == ("from-env", ["qwen3"], {"qwen3": 32768})
    assert settings.provider_settings()["claude"].api == "anthropic"
    monkeypatch.setenv("DEFAULT_MODEL", "claude/claude-sonnet-4-5")
    assert Settings().default_model == "claude/claude-sonnet-4-5"
    assert load_settings().warnings == []  # LOCAL_KEY is the provider's key, not a misspelt setting


def test_a_provider_key_named_by_api_key_env_may_live_in_dotenv(isolated: Path) -> None:
    (isolated / "parley.toml").write_text(
        '[providers.lm]\nbase_url = "http://127.0.0.1:1234/v1"\napi_key_env = "LMSTUDIO_KEY"\n'
    )
    (isolated / ".env").write_text("LMSTUDIO_KEY=lm-secret-123\n")
    loaded = load_settings()
    assert loaded.settings.provider_settings()["lm"].key() == "lm-secret-123"
    assert "lm-secret-123" in secrets_of(loaded.settings)
    assert loaded.warnings == []


def test_admin_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_USER_IDS", "U1, U2,,")
    assert Settings().admin_user_ids == ["U1", "U2"]


# Where settings come from


def test_parley_home_holds_dotenv_toml_and_the_database(
    isolated: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path_factory.mktemp("home")
    (home / ".env").write_text("OPENROUTER_API_KEY=sk-or-home\n")
    (home / "parley.toml").write_text('default_model = "openrouter/openai/gpt-4o-mini"\n')
    (isolated / ".env").write_text("OPENROUTER_API_KEY=sk-or-cwd\n")  # not read: the home is elsewhere
    monkeypatch.setenv("PARLEY_HOME", str(home))
    loaded = load_settings()
    settings = loaded.settings
    assert settings.provider_settings()["openrouter"].key() == "sk-or-home"
    assert settings.default_model == "openrouter/openai/gpt-4o-mini"
    assert settings.database_url == f"sqlite+aiosqlite:///{home}/data/parley.db"
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///memory/other.db")  # relative: under the home
    assert Settings().database_url == f"sqlite+aiosqlite:///{home}/memory/other.db"
    assert loaded.locations.describe() == (f"the environment, then {home}/.env, then {home}/parley.toml")
    monkeypatch.setenv("PARLEY_HOME", str(home / "missing"))
    assert problems() == [f"PARLEY_HOME names {home}/missing, which is not a folder."]


def test_a_missing_parley_config_is_an_error_and_a_missing_default_toml_is_not(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().locations.describe() == (
        f"the environment, then {isolated}/.env (none there), then {isolated}/parley.toml (none there)"
    )
    monkeypatch.setenv("PARLEY_CONFIG", "conf/parley.toml")
    assert problems() == [f"PARLEY_CONFIG names {isolated}/conf/parley.toml, which does not exist."]
    with pytest.raises(ConfigError):  # every Settings(), not only the CLI's
        Settings()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('default_model = "a"\nmax_retries = \n', "line 2, column 15: invalid value"),
        ('[providers.lm\nbase_url = "x"\n', "line 1, column 14: expected ']' at the end of a table"),
        ('system_prompt = "unterminated\n', "line 1, column 30: illegal character '\\n'"),
    ],
)
def test_a_toml_syntax_error_names_the_file_line_and_column(isolated: Path, text: str, where: str) -> None:
    (isolated / "parley.toml").write_text(text)
    [problem] = problems()
    assert problem.startswith(f"{isolated}/parley.toml has a syntax error at {where}")


def test_unreadable_files_are_one_sentence(isolated: Path) -> None:
    (isolated / ".env").write_bytes(b"OPENROUTER_API_KEY=\xff\xfe\n")
    assert problems() == [f"{isolated}/.env could not be read: it is not UTF-8 text."]
    (isolated / ".env").unlink()
    (isolated / "parley.toml").mkdir()
    [problem] = problems()
    assert problem.startswith(f"{isolated}/parley.toml could not be read (")


# Mistakes name the variable as written and where it was set


def test_field_errors_name_the_variable_and_where_it_was_set(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_RETRIES", "lots")
    (isolated / ".env").write_text("SEARCH_BACKEND=altavista\nPORT=70000\nSHOW_REASONING=maybe\n")
    (isolated / "parley.toml").write_text(
        'chunk_timeout = "soon"\nREPLY_TIMEOUT = 0\n[providers.lm]\napi = "openai"\n'
    )
    assert sorted(problems()) == sorted(
        [
            "MAX_RETRIES (set in the environment) must be a whole number, not 'lots'.",
            f"SEARCH_BACKEND (set in {isolated}/.env) must be 'duckduckgo', 'searxng' or 'brave', "
            "not 'altavista'.",
            f"PORT (set in {isolated}/.env) must be at most 65535, not '70000'.",
            f"SHOW_REASONING (set in {isolated}/.env) must be true or false, not 'maybe'.",
            f"chunk_timeout (in {isolated}/parley.toml) must be a number, not 'soon'.",
            f"REPLY_TIMEOUT (in {isolated}/parley.toml) must be more than 0, not 0.",
            f"providers.lm.base_url (in {isolated}/parley.toml) is required.",
        ]
    )


def test_the_environment_wins_and_is_the_one_named(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated / ".env").write_text("MAX_RETRIES=2\n")
    monkeypatch.setenv("max_retries", "-1")  # names are not case-sensitive
    assert problems() == ["max_retries (set in the environment) must be at least 0, not '-1'."]


def test_a_log_level_that_is_not_a_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "verbose")
    assert problems() == [
        "LOG_LEVEL (set in the environment) must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
        "not 'verbose'."
    ]
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    settings = load_settings().settings
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")


def test_secrets_are_never_repeated_in_a_field_error(isolated: Path) -> None:
    (isolated / "parley.toml").write_text('[providers.lm]\nbase_url = "http://h"\napi_key = 12345678\n')
    [problem] = problems()
    assert problem == f"providers.lm.api_key (in {isolated}/parley.toml) must be text."


@pytest.mark.parametrize(
    ("url", "sentence"),
    [
        (
            "data/parley.db",
            "is not a database URL; write it like sqlite+aiosqlite:///data/parley.db "
            "or postgresql+asyncpg://USER:PASSWORD@HOST/DB.",
        ),
        (
            "sqlite:///data/x.db",
            "uses the synchronous pysqlite driver; Parley needs an asynchronous one: "
            "sqlite+aiosqlite:///data/x.db.",
        ),
        (
            "postgres://parley:hunter2@db/parley",
            "starts with postgres://, which SQLAlchemy does not know; write postgresql+asyncpg://.",
        ),
        (
            "mysql+aiomysql://parley:hunter2@db/parley",
            "needs the aiomysql driver, which is not installed: pip install aiomysql.",
        ),
        (
            "mongodb://db/parley",
            "names mongodb, a database SQLAlchemy does not know; use sqlite+aiosqlite:///PATH or "
            "postgresql+asyncpg://USER:PASSWORD@HOST/DB.",
        ),
    ],
)
def test_a_database_url_that_cannot_work(monkeypatch: pytest.MonkeyPatch, url: str, sentence: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert problems() == [f"DATABASE_URL (set in the environment) {sentence}"]


def test_where_memory_lives_is_shown_without_a_password() -> None:
    assert describe_database("sqlite+aiosqlite:////srv/parley/data/parley.db") == (
        "SQLite file /srv/parley/data/parley.db"
    )
    assert describe_database("sqlite+aiosqlite:///:memory:") == "SQLite in memory (forgotten at exit)"
    assert describe_database("postgresql+asyncpg://parley:hunter2@db:5432/parley") == (
        "postgresql+asyncpg://parley:***@db:5432/parley"
    )


def test_postgresql_without_its_driver_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("asyncpg", "psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # not installed, whatever this machine has
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://parley:hunter2@db/parley")
    assert problems() == [
        "DATABASE_URL (set in the environment) needs the asyncpg driver, which is not installed: "
        "pip install -e '.[postgres]'."
    ]
    monkeypatch.setenv("DATABASE_URL", "postgresql://parley:hunter2@db/parley")
    [problem] = problems()
    assert problem.endswith(
        "driver, which is not installed; Parley's PostgreSQL driver is asyncpg: "
        "pip install -e '.[postgres]' and write postgresql+asyncpg://."
    )
    assert "hunter2" not in problem


# Names that look like misspelt settings


def test_misspelt_names_get_a_warning_with_the_closest_setting(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEFUALT_MODEL", "openrouter/x")
    monkeypatch.setenv("OPENROUTER_APIKEY", "sk-or-1")
    for unrelated in ("OPENAI_API_BASE", "DATABASE", "SLACK_WEBHOOK_URL", "PATH_INFO"):
        monkeypatch.setenv(unrelated, "another program's")  # the environment is shared: not flagged
    (isolated / ".env").write_text("SLACK_TOKEN=xoxb-1\nPOSTGRES_PASSWORD=x\nPARLEY_HOME=/srv/parley\n")
    (isolated / "parley.toml").write_text(
        'defualt_model = "a"\nunheard_of = 1\n'
        '[provider.lm]\nbase_url = "http://h"\n'
        '[providers.local]\nbase_ur = "http://h"\nbase_url = "http://h"\nmodel = ["m"]\n'
    )
    assert load_settings().warnings == [
        f"PARLEY_HOME in {isolated}/.env has no effect; set it in the environment.",
        "DEFUALT_MODEL in the environment is not a setting; did you mean DEFAULT_MODEL?",
        "OPENROUTER_APIKEY in the environment is not a setting; did you mean OPENROUTER_API_KEY?",
        f"SLACK_TOKEN in {isolated}/.env is not a setting; did you mean SLACK_BOT_TOKEN?",
        f"defualt_model in {isolated}/parley.toml is not a setting; did you mean default_model?",
        f"unheard_of in {isolated}/parley.toml is not a setting.",
        f"[provider] in {isolated}/parley.toml is not a setting; did you mean [providers]?",
        f"base_ur in [providers.local] of {isolated}/parley.toml is not a provider setting; "
        "did you mean base_url?",
        f"model in [providers.local] of {isolated}/parley.toml is not a provider setting; "
        "did you mean models?",
    ]


def test_warnings_come_with_the_errors_they_may_explain(isolated: Path) -> None:
    (isolated / "parley.toml").write_text('[providers.lm]\nbase_ur = "http://h"\n')
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert refused.value.problems == [f"providers.lm.base_url (in {isolated}/parley.toml) is required."]
    assert refused.value.warnings == [
        f"base_ur in [providers.lm] of {isolated}/parley.toml is not a provider setting; "
        "did you mean base_url?"
    ]


def test_the_ssrf_guard_cannot_be_switched_off_by_a_setting(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FETCH_ALLOW_PRIVATE", "true")
    (isolated / ".env").write_text("FETCH_ALLOW_PRIVATE=true\n")
    (isolated / "parley.toml").write_text("fetch_allow_private = true\n")
    loaded = load_settings()
    assert loaded.settings.fetch_allow_private is False
    assert loaded.warnings == [
        "FETCH_ALLOW_PRIVATE in the environment is not a setting: "
        "Parley never reads pages on private or loopback addresses.",
        f"FETCH_ALLOW_PRIVATE in {isolated}/.env is not a setting: "
        "Parley never reads pages on private or loopback addresses.",
        f"fetch_allow_private in {isolated}/parley.toml is not a setting: "
        "Parley never reads pages on private or loopback addresses.",
    ]
    assert Settings(_env_file=None, fetch_allow_private=True).fetch_allow_private is True  # tests only


# Logs


def test_secrets_are_masked_in_log_lines_and_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOM_KEY", "custom-secret-999")
    settings = Settings(
        openrouter_api_key="sk-or-v1-topsecret",
        providers={"x": {"base_url": "http://h", "api_key_env": "CUSTOM_KEY"}},
    ).model_copy(update={"database_url": "postgresql+asyncpg://parley:db-password-1@db/parley"})
    formatter = RedactingFormatter(secrets_of(settings), "%(message)s")
    try:
        raise RuntimeError("auth failed for sk-or-v1-topsecret via db-password-1")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "key %s", ("custom-secret-999",), None)
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "sk-or-v1-topsecret" not in line and "custom-secret-999" not in line
    assert "db-password-1" not in line
    assert line.startswith("key ***") and "auth failed for *** via ***" in line
    json_line = JsonFormatter(secrets_of(settings)).format(record)
    entry = json.loads(json_line)
    assert entry["message"] == "key ***" and "auth failed for *** via ***" in entry["exception"]
    assert "topsecret" not in json_line and "custom-secret" not in json_line


def test_json_logs_are_one_object_per_line_with_an_events_fields(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", 'sk-or-"quoted\\secret')
    configure_logging(Settings(_env_file=None, log_format="json", log_level="DEBUG"))
    log = logging.getLogger("bot.test")
    log_event(log, "reply", platform="slack", model="openrouter/m", prompt_tokens=None, latency_ms=12)
    log.debug('key is sk-or-"quoted\\secret\nsecond line')
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    reply, debug = (json.loads(line) for line in lines)
    assert reply["level"] == "INFO" and reply["logger"] == "bot.test"
    assert reply["message"] == "reply platform=slack model=openrouter/m prompt_tokens=- latency_ms=12"
    assert {k: reply[k] for k in ("event", "platform", "model", "prompt_tokens", "latency_ms")} == {
        "event": "reply",
        "platform": "slack",
        "model": "openrouter/m",
        "prompt_tokens": None,
        "latency_ms": 12,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", reply["time"])
    assert debug["message"] == "key is ***\nsecond line"


def test_discord_voice_notices_are_silenced(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(_env_file=None))
    logging.getLogger("discord.client").warning("PyNaCl is not installed, voice will NOT be supported")
    logging.getLogger("discord.client").warning("davey is not installed, voice will NOT be supported")
    logging.getLogger("discord.client").warning("a real problem")
    err = capsys.readouterr().err
    assert "voice" not in err and "a real problem" in err


# Every setting is documented, and nothing that is not a setting


def _documented_in_env_example() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def _documented_in_readme(header: str) -> set[str]:
    names: set[str] = set()
    lines = (ROOT / "README.md").read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith(header):
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1]))
    return names


def test_every_setting_is_in_env_example_and_the_readme_tables_and_nothing_else() -> None:
    settings = {name.upper() for name in Settings.model_fields} - {name.upper() for name in TOML_ONLY}
    assert _documented_in_env_example() == settings
    assert _documented_in_readme("| setting |") == settings
    assert _documented_in_readme("| variable |") == LOCATIONS
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for table in ("[providers.NAME]", "[fallbacks]"):
        assert table in readme and table in example
    assert all(name in example for name in LOCATIONS)


def test_budgets_access_and_prices_are_checked_in_the_names_written(isolated: Path) -> None:
    (isolated / "parley.toml").write_text(
        "[budgets]\nperson_dayly_usd = 1\nchannel_monthly_tokens = -5\n"
        '[access]\nallow_user = ["U1"]\nrefuse_in_channel = "shout"\n'
        '[providers.anthropic.prices]\n"claude-sonnet-4-5" = { prompt = "lots" }\n'
    )
    with pytest.raises(ConfigError) as refused:
        load_settings()
    where = f"(in {isolated}/parley.toml)"
    assert sorted(refused.value.problems) == [
        f"access.allow_user {where} is not a setting; did you mean allow_users?",
        f"access.refuse_in_channel {where} must be 'silent' or 'reply', not 'shout'.",
        f"budgets.channel_monthly_tokens {where} must be at least 0, not -5.",
        f"budgets.person_dayly_usd {where} is not a setting; did you mean person_daily_usd?",
        f"providers.anthropic.prices.claude-sonnet-4-5.prompt {where} must be a number, not 'lots'.",
    ]


def test_a_presets_prices_table_adds_to_the_preset(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-1")
    (isolated / "parley.toml").write_text(
        '[providers.anthropic.prices]\n"claude-sonnet-4-5" = { prompt = 3, completion = 15 }\n'
    )
    anthropic = load_settings().settings.provider_settings()["anthropic"]
    assert (anthropic.api, anthropic.base_url) == ("anthropic", "https://api.anthropic.com")
    price = anthropic.prices["claude-sonnet-4-5"]
    assert (price.prompt, price.completion) == (3.0, 15.0)
