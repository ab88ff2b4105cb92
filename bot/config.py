"""Settings from the environment, `.env` and an optional TOML file, validated in one place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_MODEL = "openrouter/xiaomi/mimo-v2-flash"
DEFAULT_SYSTEM_PROMPT = (
    "You are Parley, a helpful assistant in a team chat. Answer concisely in Markdown. "
    "Each message from a person starts with their name and a colon; several people may take part."
)

CommaList = Annotated[list[str], NoDecode]


class SetupError(Exception):
    """A platform refused its configuration (a bad token, a missing secret): `parley run` prints the
    message as one line and exits 1, since a traceback would only bury it."""


class ProviderSettings(BaseModel):
    """One LLM endpoint. Built-in presets and `[providers.NAME]` tables in TOML share this shape."""

    base_url: str
    api: Literal["openai", "anthropic"] = "openai"
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    models: list[str] | None = None  # allow-list; None offers whatever the endpoint lists
    context_length: dict[str, int] = Field(default_factory=dict)  # per model id
    vision: list[str] = Field(default_factory=list)  # model ids that accept images
    headers: dict[str, str] = Field(default_factory=dict)
    # What the reply's token limit is called; None: max_completion_tokens for `openai`, else max_tokens.
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] | None = None

    def key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    default_model: str = DEFAULT_MODEL
    database_url: str = "sqlite+aiosqlite:///data/parley.db"
    log_level: str = "INFO"
    # Used where a channel has set no /system prompt of its own.
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    # Built-in provider presets: each is active when its key (or, for Ollama, its URL) is set.
    openrouter_api_key: SecretStr | None = None
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str = "https://api.anthropic.com"
    ollama_base_url: str | None = None
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    # Per-model fallback chains, {"openrouter/a": ["openai/b"]}, tried when a model fails before any text.
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)

    # Reply shaping and limits.
    reply_max_tokens: int = 4096
    default_context_length: int = 32768
    show_reasoning: bool = False
    models_cache_seconds: float = 600.0
    connect_timeout: float = 10.0
    first_token_timeout: float = 90.0
    chunk_timeout: float = 60.0
    reply_timeout: float = 300.0
    # A message accepted but not answered before a crash is answered after the restart when it is younger
    # than this; older ones get a line saying they went unanswered.
    pending_max_age_seconds: float = 600.0
    # At shutdown, replies under way get this long to finish before they are cut off with a note.
    shutdown_grace_seconds: float = 10.0
    max_retries: int = 3
    retry_after_cap: float = 30.0

    # People who may change settings everywhere, as platform user ids (or role ids on Discord).
    admin_user_ids: CommaList = Field(default_factory=list)
    admin_role_ids: CommaList = Field(default_factory=list)

    # Discord.
    discord_token: SecretStr | None = None
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    discord_reply_in_dms: bool = True

    # Slack.
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_thread_followups: bool = True
    slack_render_interval: float = 1.0  # seconds between renders of one Slack reply
    port: int = 3000

    # Web search.
    search_backend: Literal["duckduckgo", "searxng", "brave"] = "duckduckgo"
    searxng_url: str | None = None
    brave_api_key: SecretStr | None = None
    brave_api_url: str = "https://api.search.brave.com/res/v1/web/search"
    search_results: int = 5
    search_pages_read: int = 2  # result pages whose text is read for the model, besides their snippets
    search_cache_seconds: float = 600.0
    fetch_allow_private: bool = False  # only for tests: lets page reading reach loopback

    @field_validator("admin_user_ids", "admin_role_ids", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("PARLEY_CONFIG", "parley.toml"))
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )

    def provider_settings(self) -> dict[str, ProviderSettings]:
        """Every active provider by name: presets whose key is set, then custom TOML ones (which win)."""
        active: dict[str, ProviderSettings] = {}
        if self.openrouter_api_key:
            active["openrouter"] = ProviderSettings(
                base_url=self.openrouter_base_url, api_key=self.openrouter_api_key
            )
        if self.openai_api_key:
            active["openai"] = ProviderSettings(base_url=self.openai_base_url, api_key=self.openai_api_key)
        if self.anthropic_api_key:
            active["anthropic"] = ProviderSettings(
                base_url=self.anthropic_base_url, api="anthropic", api_key=self.anthropic_api_key
            )
        if self.ollama_base_url:
            active["ollama"] = ProviderSettings(base_url=self.ollama_base_url)
        active.update(self.providers)
        return active
