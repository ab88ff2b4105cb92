"""Logging that cannot leak secrets: every configured key is masked in every line, tracebacks included."""

from __future__ import annotations

import logging
import os
import sys

from pydantic import SecretStr

from bot.config import Settings


class RedactingFormatter(logging.Formatter):
    def __init__(self, secrets: list[str], fmt: str) -> None:
        super().__init__(fmt)
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


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
    return found


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(secrets_of(settings), "%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # httpx logs every request URL at INFO; keep it for debugging only.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
