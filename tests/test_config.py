"""Configuration from the environment, .env and TOML, and logs that never show a secret."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from bot.config import DEFAULT_MODEL, Settings
from bot.logs import RedactingFormatter, secrets_of


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in (
        "OPENROUTER_API_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OLLAMA_BASE_URL",
        "DEFAULT_MODEL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("PARLEY_CONFIG", raising=False)
    return tmp_path


def test_defaults_need_nothing_and_activate_no_provider() -> None:
    settings = Settings()
    assert settings.default_model == DEFAULT_MODEL == "openrouter/xiaomi/mimo-v2-flash"
    assert settings.database_url == "sqlite+aiosqlite:///data/parley.db"
    assert settings.provider_settings() == {}


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


def test_admin_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_USER_IDS", "U1, U2,,")
    assert Settings().admin_user_ids == ["U1", "U2"]


def test_a_bad_value_is_refused() -> None:
    with pytest.raises(ValueError, match="search_backend"):
        Settings(search_backend="altavista")


def test_secrets_are_masked_in_log_lines_and_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOM_KEY", "custom-secret-999")
    settings = Settings(
        openrouter_api_key="sk-or-v1-topsecret",
        providers={"x": {"base_url": "http://h", "api_key_env": "CUSTOM_KEY"}},
    )
    formatter = RedactingFormatter(secrets_of(settings), "%(message)s")
    try:
        raise RuntimeError("auth failed for sk-or-v1-topsecret")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "key %s", ("custom-secret-999",), None)
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "sk-or-v1-topsecret" not in line and "custom-secret-999" not in line
    assert line.startswith("key ***") and "auth failed for ***" in line
