"""Discord: the whole engine in a Discord server, through discord.py."""

from __future__ import annotations

import discord

from adapters.discord.login import login, point_at
from adapters.discord.port import DiscordPlatform
from bot.config import Settings, SetupError
from bot.engine import Engine
from bot.skills import Skill


def platform(engine: Engine, settings: Settings) -> DiscordPlatform:
    return DiscordPlatform(engine, settings)


async def sync_commands(settings: Settings, guild_id: int | None, skills: list[Skill]) -> str:
    """Register the slash commands now: in one server (instant) or globally."""
    point_at(settings)
    engine = await Engine.create(settings, skills=skills)
    client = DiscordPlatform(engine, settings).client
    try:
        await login(client, settings)
        guild = discord.Object(guild_id) if guild_id is not None else None
        if guild is not None:
            client.tree.copy_global_to(guild=guild)
        try:
            synced = await client.tree.sync(guild=guild)
        except discord.HTTPException as error:
            raise SetupError(f"Discord refused the slash commands ({error.status}: {error.text})") from None
        if guild is not None:
            return f"Synced {len(synced)} commands to server {guild_id}; they are available there now."
        return f"Synced {len(synced)} commands globally; Discord may take a while to show them everywhere."
    finally:
        await client.close()
        await engine.aclose()
