"""Settings that point Parley at the loopback Discord: what the Discord fixtures in conftest.py build on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.config import Settings
from tests.support.discord_emulator import DiscordEmulator


def discord_settings_for(
    make_settings: Callable[..., Settings], discord_api: DiscordEmulator, **overrides: Any
) -> Settings:
    """The test's settings with Discord's REST and gateway on the emulator; `overrides` for what differs."""
    return make_settings(
        discord_token="t",
        discord_api_base=discord_api.api_base,
        discord_gateway_url=discord_api.gateway_url,
        **overrides,
    )
