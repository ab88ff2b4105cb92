"""Discord: the whole engine in a Discord server, through discord.py."""

from __future__ import annotations

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.client import ParleyDiscord
from bot.config import Settings, SetupError
from bot.engine import Engine


def _point_at(settings: Settings) -> None:
    # discord.py reads these class attributes when it builds requests and connects; set them for gateways.
    Route.BASE = settings.discord_api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def serve(engine: Engine, settings: Settings) -> None:
    """Run the bot until cancelled."""
    assert settings.discord_token is not None
    _point_at(settings)
    client = ParleyDiscord(engine, settings)
    async with client:
        try:
            await client.start(settings.discord_token.get_secret_value())
        except discord.LoginFailure:
            message = "Discord refused DISCORD_TOKEN; reset the token in the developer portal"
            raise SetupError(message) from None


async def sync_commands(settings: Settings, guild_id: int | None) -> str:
    """Register the slash commands now: in one server (instant) or globally."""
    assert settings.discord_token is not None
    _point_at(settings)
    engine = await Engine.create(settings)
    client = ParleyDiscord(engine, settings, sync_on_start=False)
    try:
        await client.login(settings.discord_token.get_secret_value())
        if guild_id is not None:
            guild = discord.Object(guild_id)
            client.tree.copy_global_to(guild=guild)
            synced = await client.tree.sync(guild=guild)
            return f"Synced {len(synced)} commands to server {guild_id}; they are available there now."
        synced = await client.tree.sync()
        return f"Synced {len(synced)} commands globally; Discord may take a while to show them everywhere."
    finally:
        await client.close()
        await engine.aclose()
