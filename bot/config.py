"""Settings from the environment, `.env` and `parley.toml` in PARLEY_HOME, validated in one place.

A `parley` process reads them through `bot.settings_loader.load_settings`, which words every mistake
in the operator's own names.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bot.database_url import usable_database_url

DEFAULT_MODEL = "openrouter/xiaomi/mimo-v2-flash"
DEFAULT_SYSTEM_PROMPT = (
    "You are Parley, a helpful assistant in a team chat. Answer concisely in Markdown. "
    "Each message from a person starts with their name and a colon; several people may take part."
)
# PostgreSQL connections each instance keeps for its transactions (DATABASE_POOL_SIZE).
DATABASE_POOL_SIZE = 25
HOME_VARIABLE = "PARLEY_HOME"
CONFIG_VARIABLE = "PARLEY_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Names that once did something, and what a user who sets them should know instead.
RETIRED = {"FETCH_ALLOW_PRIVATE": "Parley never reads pages on private or loopback addresses"}

CommaList = Annotated[list[str], NoDecode]


class SetupError(Exception):
    """The setup refused to work as configured (a bad token, a missing secret, a database that cannot be
    opened): `parley` prints the message as one line and exits 1, since a traceback would only bury it."""


class ConfigError(Exception):
    """Settings that cannot be used; each of `problems` is one sentence for the operator (exit 2)."""

    def __init__(self, problems: list[str], warnings: list[str] | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = warnings or []  # misspelt names, which may explain the problems


@dataclass(frozen=True, slots=True)
class Locations:
    """Where Parley reads its settings and keeps its memory: PARLEY_HOME, by default the working directory."""

    home: Path
    env_file: Path
    config_file: Path
    config_named: bool  # PARLEY_CONFIG named the file, so it must exist

    @classmethod
    def from_environment(cls) -> Locations:
        home = Path(os.environ.get(HOME_VARIABLE) or os.curdir).expanduser().resolve()
        named = os.environ.get(CONFIG_VARIABLE)
        config = Path(named).expanduser().resolve() if named else home / "parley.toml"
        return cls(home, home / ".env", config, bool(named))

    def read_toml(self) -> dict[str, Any]:
        """The TOML file's tables ({} without one); ConfigError when it is named but missing, or broken."""
        if not self.home.is_dir():
            raise ConfigError([f"{HOME_VARIABLE} names {self.home}, which is not a folder."])
        if not self.config_file.exists():
            if self.config_named:
                raise ConfigError([f"{CONFIG_VARIABLE} names {self.config_file}, which does not exist."])
            return {}
        try:
            with self.config_file.open("rb") as file:
                return tomllib.load(file)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError([_syntax_error(self.config_file, str(error))]) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError([_unreadable(self.config_file, error)]) from None

    def read_dotenv(self) -> dict[str, str | None]:
        if not self.env_file.exists():
            return {}
        try:
            return dotenv_values(self.env_file)
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError([_unreadable(self.env_file, error)]) from None

    def describe(self) -> str:
        def shown(path: Path) -> str:
            return str(path) if path.exists() else f"{path} (none there)"

        return f"the environment, then {shown(self.env_file)}, then {shown(self.config_file)}"


class ModelPrice(BaseModel):
    """USD per million tokens, for models whose listing has no price (`[providers.NAME.prices]`)."""

    model_config = ConfigDict(extra="forbid")

    prompt: float = Field(ge=0)
    completion: float = Field(0.0, ge=0)


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
    prices: dict[str, ModelPrice] = Field(default_factory=dict)  # per model id, used when nothing else says

    def key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


# Usage, budgets and access (issue 15).
PRESETS = ("openrouter", "openai", "anthropic", "ollama")


class PresetExtras(BaseModel):
    """A `[providers.NAME]` table for a built-in preset without a base_url: it adds to the preset."""

    model_config = ConfigDict(extra="forbid")

    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    context_length: dict[str, int] = Field(default_factory=dict)
    vision: list[str] = Field(default_factory=list)


class BudgetDefaults(BaseModel):
    """`[budgets]`: limits for every person, channel and server (Discord server, Slack workspace)."""

    model_config = ConfigDict(extra="forbid")

    person_daily_usd: float | None = Field(None, ge=0)
    person_monthly_usd: float | None = Field(None, ge=0)
    person_daily_tokens: int | None = Field(None, ge=0)
    person_monthly_tokens: int | None = Field(None, ge=0)
    channel_daily_usd: float | None = Field(None, ge=0)
    channel_monthly_usd: float | None = Field(None, ge=0)
    channel_daily_tokens: int | None = Field(None, ge=0)
    channel_monthly_tokens: int | None = Field(None, ge=0)
    server_daily_usd: float | None = Field(None, ge=0)
    server_monthly_usd: float | None = Field(None, ge=0)
    server_daily_tokens: int | None = Field(None, ge=0)
    server_monthly_tokens: int | None = Field(None, ge=0)


class AccessLists(BaseModel):
    """`[access]`: who may use Parley, by platform ids. A deny list always wins; an allow list that is set
    lets in only what it names."""

    model_config = ConfigDict(extra="forbid")

    allow_users: list[str] = Field(default_factory=list)
    deny_users: list[str] = Field(default_factory=list)
    allow_roles: list[str] = Field(default_factory=list)
    deny_roles: list[str] = Field(default_factory=list)
    allow_channels: list[str] = Field(default_factory=list)
    deny_channels: list[str] = Field(default_factory=list)
    allow_servers: list[str] = Field(default_factory=list)
    deny_servers: list[str] = Field(default_factory=list)
    # Where the platform has no private answer (a Discord channel message): say nothing, or reply.
    refuse_in_channel: Literal["silent", "reply"] = "silent"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    default_model: str = DEFAULT_MODEL
    # Validated when loaded: an async driver that is installed; a relative SQLite path is under PARLEY_HOME.
    database_url: str = Field("sqlite+aiosqlite:///data/parley.db", validate_default=True)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
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
    reply_max_tokens: int = Field(4096, gt=0)
    default_context_length: int = Field(32768, gt=0)
    show_reasoning: bool = False
    models_cache_seconds: float = Field(600.0, ge=0)
    connect_timeout: float = Field(10.0, gt=0)
    first_token_timeout: float = Field(90.0, gt=0)
    chunk_timeout: float = Field(60.0, gt=0)
    reply_timeout: float = Field(300.0, gt=0)
    # A message accepted but not answered before a crash is answered after the restart when it is younger
    # than this; older ones get a line saying they went unanswered.
    pending_max_age_seconds: float = Field(600.0, ge=0)
    # At shutdown, replies under way get this long to finish before they are cut off with a note.
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    max_retries: int = Field(3, ge=0)
    retry_after_cap: float = Field(30.0, ge=0)

    # People who may change settings everywhere, as platform user ids (or role ids on Discord).
    admin_user_ids: CommaList = Field(default_factory=list)
    admin_role_ids: CommaList = Field(default_factory=list)

    # Usage, budgets and access (issue 15).
    budgets: BudgetDefaults = Field(default_factory=BudgetDefaults)
    access: AccessLists = Field(default_factory=AccessLists)
    rate_limit_per_minute: int = Field(0, ge=0)  # replies one person may start per minute; 0: no limit
    metrics_port: int | None = Field(None, ge=1, le=65535)  # /healthz and /metrics; unset: not served
    preset_extras: dict[str, PresetExtras] = Field(default_factory=dict)  # see `_preset_tables`

    # PostgreSQL: the connections of each instance's pool (its advisory locks take up to three more);
    # a transaction beyond them waits for one, in turn, however long.
    database_pool_size: int = Field(DATABASE_POOL_SIZE, ge=1)

    # Discord.
    discord_token: SecretStr | None = None
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    discord_reply_in_dms: bool = True
    # Discord shards (issue 13): how many gateway shards the bot runs, spread over the instances by
    # leases; 1 is one connection and no leases.
    discord_shard_count: int = 1

    # Slack.
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_thread_followups: bool = True
    slack_render_interval: float = Field(1.0, gt=0)  # seconds between renders of one Slack reply
    port: int = Field(3000, ge=1, le=65535)

    # Reply controls: editing the message Parley answered, this soon after sending it, regenerates the
    # answer in place.
    edit_regenerate_seconds: float = Field(300.0, ge=0)
    # Long conversations: turns that fall out of the window are summarized by this model (default: the
    # conversation's own), and a reply waits at most this long for the summary to be brought up to date.
    summary_model: str | None = None
    summary_wait_seconds: float = Field(2.0, ge=0)
    # Several instances on one PostgreSQL: each beats its heartbeat this often; one silent for longer
    # than the timeout is dead, and the leader takes over what it left unfinished.
    instance_heartbeat_seconds: float = Field(2.0, gt=0)
    instance_timeout_seconds: float = Field(10.0, gt=0)

    # Context: each conversation's recent turns are kept in memory, within this many MB for all of them
    # (least recently used dropped first), so a reply reads only what is new; 0 reads every reply's turns.
    context_memory_mb: float = Field(64.0, ge=0)

    # Web search.
    search_backend: Literal["duckduckgo", "searxng", "brave"] = "duckduckgo"
    searxng_url: str | None = None
    brave_api_key: SecretStr | None = None
    brave_api_url: str = "https://api.search.brave.com/res/v1/web/search"
    search_results: int = Field(5, ge=1)
    search_pages_read: int = Field(2, ge=0)  # result pages whose text is read for the model
    search_cache_seconds: float = Field(600.0, ge=0)

    # Schedules and /summarize: the least time between two runs of one schedule, how many schedules a
    # conversation may hold, the time zone of conversations that set none, and how late a run missed
    # while Parley was down may still be made up.
    schedule_min_interval: float = Field(900.0, ge=0)
    schedule_max_per_conversation: int = Field(20, ge=1)
    schedule_timezone: str = "UTC"
    schedule_catchup_seconds: float = Field(3600.0, ge=0)

    # A seam for tests, which serve result pages on loopback: only `Settings(fetch_allow_private=True)` in
    # code sets it. No environment variable, .env or parley.toml key reaches it, so the SSRF guard of
    # page reading cannot be switched off in a deployment.
    _fetch_allow_private: bool = PrivateAttr(False)

    def __init__(self, *, fetch_allow_private: bool = False, **values: Any) -> None:
        super().__init__(**values)
        self._fetch_allow_private = fetch_allow_private

    @property
    def fetch_allow_private(self) -> bool:
        return self._fetch_allow_private

    @model_validator(mode="before")
    @classmethod
    def _preset_tables(cls, data: Any) -> Any:
        """`[providers.anthropic.prices]` and the like: a preset's table without a base_url adds to it."""
        if not isinstance(data, dict) or not isinstance(data.get("providers"), dict):
            return data
        tables = dict(data["providers"])
        extras = {
            name: tables.pop(name)
            for name in list(tables)
            if name in PRESETS and isinstance(tables[name], dict) and "base_url" not in tables[name]
        }
        return {**data, "providers": tables, "preset_extras": extras} if extras else data

    @field_validator("admin_user_ids", "admin_role_ids", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("discord_shard_count")
    @classmethod
    def _shard_count(cls, value: int) -> int:
        if value < 1:
            raise ValueError(
                f"must be 1 or more (the number of Discord gateway shards, the same on every instance), "
                f"not {value}"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
        return level

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("schedule_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from bot.when import BadWhen, zone

        try:
            zone(value)
        except BadWhen:
            wanted = "must be an IANA time zone such as Europe/Berlin or UTC"
            raise ValueError(f"{wanted}, not {value!r}") from None
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _usable_database(cls, url: str) -> str:
        return usable_database_url(url, Locations.from_environment().home)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        where = Locations.from_environment()
        env_file = getattr(dotenv_settings, "env_file", None)
        if isinstance(env_file, str | Path) and not Path(env_file).is_absolute():
            # A relative .env (the default) lives in PARLEY_HOME, not wherever the process was started.
            dotenv_settings = DotEnvSettingsSource(settings_cls, env_file=where.home / env_file)
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            InitSettingsSource(settings_cls, where.read_toml()),
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
        for name, extras in self.preset_extras.items():
            if name in active:
                added = {field: getattr(extras, field) for field in extras.model_fields_set}
                active[name] = active[name].model_copy(update=added)
        active.update(self.providers)
        return active


def _syntax_error(path: Path, message: str) -> str:
    found = re.fullmatch(r"(?s)(.*) \(at line (\d+), column (\d+)\)", message)
    if not found:
        return f"{path} is not valid TOML: {message}."
    reason, line, column = found.groups()
    return f"{path} has a syntax error at line {line}, column {column}: {reason[:1].lower()}{reason[1:]}."


def _unreadable(path: Path, error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"{path} could not be read: it is not UTF-8 text."
    return f"{path} could not be read ({getattr(error, 'strerror', None) or error})."
