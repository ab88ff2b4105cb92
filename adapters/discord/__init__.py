"""Discord: the whole engine in a Discord server, through discord.py."""

from __future__ import annotations

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.client import ParleyDiscord
from bot.config import Settings, SetupError
from bot.engine import Engine

PORTAL = "https://discord.com/developers/applications"


def _point_at(settings: Settings) -> None:
    # discord.py reads these class attributes when it builds requests and connects; set them for gateways.
    Route.BASE = settings.discord_api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def serve(engine: Engine, settings: Settings) -> None:
    """Run the bot until cancelled; a token, network or intent problem is one SetupError sentence."""
    _point_at(settings)
    client = ParleyDiscord(engine, settings)
    async with client:
        await _login(client, settings)
        try:
            await client.connect()
        except discord.PrivilegedIntentsRequired:
            raise SetupError(_intent_off(client.application_id)) from None


async def sync_commands(settings: Settings, guild_id: int | None) -> str:
    """Register the slash commands now: in one server (instant) or globally."""
    _point_at(settings)
    engine = await Engine.create(settings)
    client = ParleyDiscord(engine, settings, sync_on_start=False)
    try:
        await _login(client, settings)
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


async def _login(client: ParleyDiscord, settings: Settings) -> None:
    """Log in, turning what an operator can fix (the token, the network) into one sentence."""
    assert settings.discord_token is not None
    try:
        await client.login(settings.discord_token.get_secret_value())
    except discord.LoginFailure:
        message = "Discord refused DISCORD_TOKEN; reset the token in the developer portal"
        raise SetupError(message) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        raise SetupError(_unreachable(settings.discord_api_base, error)) from None
    except discord.DiscordServerError as error:
        message = f"Discord is failing ({error.status}) and could not log Parley in; try again shortly"
        raise SetupError(message) from None


def _unreachable(api_base: str, error: BaseException) -> str:
    cause = getattr(error, "os_error", error)
    if isinstance(cause, ConnectionRefusedError):
        reason = "nothing answers there"
    elif isinstance(error, aiohttp.ClientConnectorDNSError):
        reason = "the host name does not resolve"
    elif isinstance(error, TimeoutError):
        reason = "it did not answer in time"
    else:
        reason = str(error) or type(error).__name__
    return (
        f"Could not reach Discord at {api_base} ({reason}); check the network connection, "
        "or DISCORD_API_BASE if you set it"
    )


def _intent_off(application_id: int | None) -> str:
    page = f"{PORTAL}/{application_id}/bot" if application_id else PORTAL
    return (
        "Discord refused the connection because the bot's Message Content intent is off: switch on "
        f"Message Content Intent under Bot → Privileged Gateway Intents at {page}, then start Parley again "
        "(Parley stops, every platform with it, rather than run a Discord bot that cannot read mentions)"
    )
