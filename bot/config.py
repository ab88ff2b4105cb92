"""Settings from the environment, `.env` and `parley.toml`, validated in one place.

A `parley` process reads them through `load_settings`, which turns every mistake into one sentence that
names the variable as the user wrote it and where it was set, and warns about names that look like
misspelt settings.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, InvalidRequestError, NoSuchModuleError
from sqlalchemy.ext.asyncio import create_async_engine

DEFAULT_MODEL = "openrouter/xiaomi/mimo-v2-flash"
DEFAULT_SYSTEM_PROMPT = (
    "You are Parley, a helpful assistant in a team chat. Answer concisely in Markdown. "
    "Each message from a person starts with their name and a colon; several people may take part."
)
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

    def key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


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
    max_retries: int = Field(3, ge=0)
    retry_after_cap: float = Field(30.0, ge=0)

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
    slack_render_interval: float = Field(1.0, gt=0)  # seconds between renders of one Slack reply
    port: int = Field(3000, ge=1, le=65535)

    # Web search.
    search_backend: Literal["duckduckgo", "searxng", "brave"] = "duckduckgo"
    searxng_url: str | None = None
    brave_api_key: SecretStr | None = None
    brave_api_url: str = "https://api.search.brave.com/res/v1/web/search"
    search_results: int = Field(5, ge=1)
    search_pages_read: int = Field(2, ge=0)  # result pages whose text is read for the model
    search_cache_seconds: float = Field(600.0, ge=0)

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

    @field_validator("admin_user_ids", "admin_role_ids", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
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
        active.update(self.providers)
        return active


@dataclass(frozen=True, slots=True)
class Loaded:
    settings: Settings
    locations: Locations
    warnings: list[str]  # one sentence each: names that look like misspelt settings


def load_settings() -> Loaded:
    """The settings of a `parley` process; ConfigError, one sentence per problem, when they cannot be used."""
    locations = Locations.from_environment()
    written = _Written(locations, dict(os.environ), locations.read_dotenv(), locations.read_toml())
    try:
        settings = Settings()
    except ValidationError as error:
        problems = [written.explain(problem) for problem in error.errors()]
        raise ConfigError(problems, written.misspellings()) from None
    written.fill_keys_from_dotenv(settings)
    return Loaded(settings, locations, written.misspellings())


def usable_database_url(url: str, home: Path) -> str:
    """`url` with a relative SQLite path made absolute under `home`; ValueError when it cannot work."""
    try:
        parsed = make_url(url)
        create_async_engine(parsed)  # loads the dialect and imports its driver; connects to nothing
    except NoSuchModuleError:
        raise ValueError(_unknown_database(url)) from None
    except ArgumentError:
        raise ValueError(
            "is not a database URL; write it like sqlite+aiosqlite:///data/parley.db "
            "or postgresql+asyncpg://USER:PASSWORD@HOST/DB"
        ) from None
    except InvalidRequestError:  # a synchronous driver
        raise ValueError(
            f"uses the synchronous {parsed.get_driver_name()} driver; Parley needs an asynchronous one: "
            f"{_async_variant(parsed)}"
        ) from None
    except ImportError as error:
        raise ValueError(_missing_driver(parsed, error.name or parsed.get_driver_name())) from None
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        path = Path(database).expanduser()
        if not database.startswith("file:") and not path.is_absolute():
            return parsed.set(database=str(home / path)).render_as_string(hide_password=False)
    return url


def describe_database(url: str) -> str:
    """Where memory lives, for logs and `parley check`: a file path, or the URL without its password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database}" if parsed.database else "SQLite in memory"
    return parsed.render_as_string(hide_password=True)


def _async_variant(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=True)
    if url.get_backend_name() == "postgresql":
        async_url = url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=True)
        return f"{async_url} (after pip install -e '.[postgres]')"
    return "see SQLAlchemy's list of asyncio dialects"


def _unknown_database(url: str) -> str:
    scheme = url.partition(":")[0]
    if scheme == "postgres":
        return "starts with postgres://, which SQLAlchemy does not know; write postgresql+asyncpg://"
    return (
        f"names {scheme}, a database SQLAlchemy does not know; "
        "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST/DB"
    )


def _missing_driver(url: URL, module: str) -> str:
    if url.get_backend_name() == "postgresql":
        if module == "asyncpg":
            return "needs the asyncpg driver, which is not installed: pip install -e '.[postgres]'"
        return (
            f"uses the {module} driver, which is not installed; Parley's PostgreSQL driver is asyncpg: "
            "pip install -e '.[postgres]' and write postgresql+asyncpg://"
        )
    return f"needs the {module} driver, which is not installed: pip install {module}"


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


# What a field error asks of the value, by pydantic's error type.
REQUIREMENTS = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "dict_type": "must be a table",
    "list_type": "must be a list",
    "missing": "is required",
}


@dataclass(frozen=True, slots=True)
class _Written:
    """What the user wrote, source by source, to say where a bad or unknown name came from."""

    locations: Locations
    environ: Mapping[str, str]
    dotenv: Mapping[str, str | None]
    toml: Mapping[str, Any]

    def explain(self, problem: ErrorDetails) -> str:
        loc = tuple(str(part) for part in problem["loc"])
        name, origin = self._origin(loc)
        kind = problem["type"]
        context = problem.get("ctx") or {}
        if kind == "value_error":
            requirement = str(context.get("error", problem["msg"]))
        elif kind == "literal_error":
            requirement = f"must be {context['expected']}"
        elif kind in ("greater_than", "greater_than_equal", "less_than_equal"):
            limit = {"greater_than": "more than", "greater_than_equal": "at least"}.get(kind, "at most")
            requirement = f"must be {limit} {next(iter(context.values())):g}"
        else:
            requirement = REQUIREMENTS.get(kind, f"is not valid: {problem['msg']}")
        shown = "" if kind in ("missing", "value_error") or _secret(loc) else _value(problem["input"])
        return f"{name}{f' ({origin})' if origin else ''} {requirement}{shown}."

    def _origin(self, loc: tuple[str, ...]) -> tuple[str, str]:
        """The name as written (`MAX_RETRIES`, `providers.local.base_url`) and where it was set."""
        field, rest = loc[0], loc[1:]
        for names, where in (
            (self.environ, "set in the environment"),
            (self.dotenv, f"set in {self.locations.env_file}"),
        ):
            written = next((n for n in names if n.lower() == field and names[n]), None)
            if written:
                return ".".join((written, *rest)), where
        written = next((n for n in self.toml if n.lower() == field), None)
        if written:
            return ".".join((written, *rest)), f"in {self.locations.config_file}"
        return ".".join(loc), ""

    def fill_keys_from_dotenv(self, settings: Settings) -> None:
        """A `[providers.NAME]` api_key_env may name a key kept in .env, as other settings are."""
        for provider in settings.providers.values():
            env = provider.api_key_env
            if provider.api_key is None and env and not self.environ.get(env) and self.dotenv.get(env):
                provider.api_key = SecretStr(self.dotenv[env] or "")

    def misspellings(self) -> list[str]:
        """A warning for each name that is not a setting but looks like one, with the setting it resembles."""
        fields = set(Settings.model_fields)
        variables = {name.upper() for name in fields} | {HOME_VARIABLE, CONFIG_VARIABLE}
        providers = next((v for k, v in self.toml.items() if k.lower() == "providers"), {})
        tables = providers.values() if isinstance(providers, dict) else ()
        key_names = {t.get("api_key_env") for t in tables if isinstance(t, dict)}
        found = []
        # The environment is shared with other programs, so only a near typo there is worth a warning.
        for names, where, cutoff in (
            (self.environ, "in the environment", 0.9),
            (self.dotenv, f"in {self.locations.env_file}", 0.8),
        ):
            for name in sorted(names):
                if name.upper() in variables or name in key_names:
                    continue
                if name.upper() in RETIRED:
                    found.append(f"{name} {where} is not a setting: {RETIRED[name.upper()]}.")
                elif close := difflib.get_close_matches(name.upper(), variables, n=1, cutoff=cutoff):
                    found.append(f"{name} {where} is not a setting; did you mean {close[0]}?")
        config = self.locations.config_file
        for key, value in self.toml.items():
            if key.lower() == "providers" and isinstance(value, dict):
                found += _unknown_provider_keys(value, config)
            elif key.lower() not in fields:
                table = isinstance(value, dict)
                label = f"[{key}]" if table else key
                close = difflib.get_close_matches(key.lower(), fields, n=1, cutoff=0.6)
                if key.upper() in RETIRED:
                    hint = f": {RETIRED[key.upper()]}."
                else:
                    hint = f"; did you mean {f'[{close[0]}]' if table else close[0]}?" if close else "."
                found.append(f"{label} in {config} is not a setting{hint}")
        return found


def _unknown_provider_keys(providers: dict[str, Any], config: Path) -> list[str]:
    fields = list(ProviderSettings.model_fields)
    found = []
    for name, table in providers.items():
        for key in table if isinstance(table, dict) else ():
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else "."
                found.append(f"{key} in [providers.{name}] of {config} is not a provider setting{hint}")
    return found


def _secret(loc: tuple[str, ...]) -> bool:
    """Whether a value may hold a secret (a key, a header, a database password), so is never repeated."""
    field = Settings.model_fields.get(loc[0])
    secret_field = field is not None and field.annotation == SecretStr | None
    return secret_field or loc[0] == "database_url" or "api_key" in loc or "headers" in loc


def _value(value: object) -> str:
    shown = repr(value)
    return f", not {shown if len(shown) <= 60 else shown[:57] + '...'}"
