"""Logging that cannot leak secrets: every configured key is masked in every line, tracebacks included.

Lines are text (`time LEVEL logger: message`) or, with LOG_FORMAT=json, one JSON object each.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from bot.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    def __init__(self, secrets: list[str], fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.mask(super().format(record))


class JsonFormatter(RedactingFormatter):
    """One JSON object per line: time, level, logger, message, an event's fields, and any traceback.

    Values are masked before encoding, so a secret is caught however JSON would escape it."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if event := getattr(record, "event", None):
            entry |= {"event": event, **getattr(record, "fields", {})}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        masked = {key: self.mask(value) if isinstance(value, str) else value for key, value in entry.items()}
        return json.dumps(masked, ensure_ascii=False, default=str)


def log_event(logger: logging.Logger, event: str, **fields: object) -> None:
    """One INFO line, `event key=value …`; in JSON each field is also a key of its own."""
    text = " ".join(f"{key}={'-' if value is None else value}" for key, value in fields.items())
    logger.info("%s %s", event, text, extra={"event": event, "fields": fields})


def secrets_of(settings: Settings) -> list[str]:
    found = [
        value.get_secret_value()
        for name in type(settings).model_fields
        if isinstance(value := getattr(settings, name), SecretStr)
    ]
    for provider in settings.providers.values():
        if provider.api_key is not None:
            found.append(provider.api_key.get_secret_value())
        if provider.api_key_env and os.environ.get(provider.api_key_env):
            found.append(os.environ[provider.api_key_env])
    if password := make_url(settings.database_url).password:
        found.append(str(password))
    return found


def _voice_notice(record: logging.LogRecord) -> bool:
    # discord.py warns at every start that PyNaCl and davey are missing; Parley never joins voice.
    return "voice will NOT be supported" not in record.getMessage()


def configure_logging(settings: Settings, *, quiet: bool = False) -> None:
    """`quiet`: warnings and errors only, unless LOG_LEVEL was set (`parley chat`, whose stderr is a
    person's screen or a script's, not an operator's log)."""
    formatter = JsonFormatter if settings.log_format == "json" else RedactingFormatter
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(secrets_of(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    quiet = quiet and "log_level" not in settings.model_fields_set
    root.setLevel(logging.WARNING if quiet else settings.log_level)
    # httpx logs every request URL at INFO; keep it for debugging only.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    # alembic names each of its plugins at INFO when first imported, which is after this for most commands.
    logging.getLogger("alembic.runtime.plugins").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("discord.client").addFilter(_voice_notice)
