"""The settings of a `parley` process, and what is wrong with them in the names the operator wrote.

A field error becomes one sentence that names the variable as written and where it was set; a name that
is not a setting but looks like one becomes a warning naming the setting it resembles.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_core import ErrorDetails

from bot.config import (
    CONFIG_VARIABLE,
    HOME_VARIABLE,
    RETIRED,
    ConfigError,
    Locations,
    ProviderSettings,
    Settings,
)


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
        if loc[0] == "preset_extras":  # a preset's own [providers.NAME] table
            loc = ("providers", *loc[1:])
        name, origin = self._origin(loc)
        kind = problem["type"]
        context = problem.get("ctx") or {}
        if kind == "extra_forbidden":  # a key a [budgets] or [access] table does not have
            return f"{name}{f' ({origin})' if origin else ''} is not a setting{_close_key(loc)}"
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
        found = [
            f"{name} in {self.locations.env_file} has no effect; set it in the environment."
            for name in sorted(self.dotenv)
            if name.upper() in (HOME_VARIABLE, CONFIG_VARIABLE)  # they say where .env is
        ]
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


def _close_key(loc: tuple[str, ...]) -> str:
    """`; did you mean person_daily_usd?` for a misspelt key of a table Settings knows, else `.`."""
    field = Settings.model_fields.get(loc[0])
    keys = list(getattr(field.annotation, "model_fields", {})) if field is not None else []
    close = difflib.get_close_matches(loc[-1], keys, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close and len(loc) == 2 else "."


def _secret(loc: tuple[str, ...]) -> bool:
    """Whether a value may hold a secret (a key, a header, a database password), so is never repeated."""
    field = Settings.model_fields.get(loc[0])
    secret_field = field is not None and field.annotation == SecretStr | None
    return secret_field or loc[0] == "database_url" or "api_key" in loc or "headers" in loc


def _value(value: object) -> str:
    shown = repr(value)
    return f", not {shown if len(shown) <= 60 else shown[:57] + '...'}"
