"""Settings that point Parley at the loopback Discord and an engine on them: what the Discord fixtures in
conftest.py build on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from bot.config import Settings
from bot.engine import Engine
from bot.skills import Skill
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


@asynccontextmanager
async def engine_on(settings: Settings, skills: Iterable[Skill] = ()) -> AsyncIterator[Engine]:
    """An engine on `settings` with `skills`, closed when the block ends."""
    engine = await Engine.create(settings, skills=skills)
    try:
        yield engine
    finally:
        await engine.aclose()
