"""Logging in and connecting, with every problem an operator can fix told in one sentence."""

from __future__ import annotations

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot.config import Settings, SetupError

PORTAL = "https://discord.com/developers/applications"


def point_at(settings: Settings) -> None:
    # discord.py reads these class attributes when it builds requests and connects; set them for gateways.
    Route.BASE = settings.discord_api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def login(client: discord.Client, settings: Settings) -> None:
    """Log in, turning what an operator can fix (the token, the network) into one sentence."""
    assert settings.discord_token is not None
    try:
        await client.login(settings.discord_token.get_secret_value())
    except discord.LoginFailure:
        message = "Discord refused DISCORD_TOKEN; reset the token in the developer portal"
        raise SetupError(message) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        raise SetupError(unreachable(settings.discord_api_base, error)) from None
    except discord.DiscordServerError as error:
        message = f"Discord is failing ({error.status}) and could not log Parley in; try again shortly"
        raise SetupError(message) from None


def connection_refused(error: BaseException | None, application_id: int | None, gateway: str) -> SetupError:
    """Why the gateway connection ended before Parley was ready, as one sentence."""
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return SetupError(intent_off(application_id))
    if isinstance(error, discord.ConnectionClosed):
        if error.code == 4004:
            return SetupError(
                "Discord refused DISCORD_TOKEN on the gateway; reset the token in the developer portal"
            )
        if error.code in (4010, 4011):  # an invalid shard; sharding required
            return SetupError(
                f"Discord refused the shard count (gateway close code {error.code}); set "
                "DISCORD_SHARD_COUNT to the number of shards the bot needs (GET /gateway/bot recommends "
                "one), the same on every instance"
            )
        return SetupError(
            f"Discord closed the gateway connection (code {error.code}) before Parley was ready"
        )
    if isinstance(error, AttributeError):  # discord.py 2.7 loses a first failed connection in its retry
        error = error.__context__
    if isinstance(error, (aiohttp.ClientError, OSError, TimeoutError)):
        return SetupError(
            f"Could not reach Discord's gateway at {gateway} ({_reason(error)}); check the network "
            "connection, or DISCORD_GATEWAY_URL if you set it"
        )
    return SetupError(f"Discord's gateway connection ended before Parley was ready ({error!r})")


def unreachable(api_base: str, error: BaseException) -> str:
    return (
        f"Could not reach Discord at {api_base} ({_reason(error)}); check the network connection, "
        "or DISCORD_API_BASE if you set it"
    )


def _reason(error: BaseException) -> str:
    cause = getattr(error, "os_error", error)
    if isinstance(cause, ConnectionRefusedError):
        reason = "nothing answers there"
    elif isinstance(error, aiohttp.ClientConnectorDNSError):
        reason = "the host name does not resolve"
    elif isinstance(error, TimeoutError):
        reason = "it did not answer in time"
    else:
        reason = str(error) or type(error).__name__
    return reason


def intent_off(application_id: int | None) -> str:
    page = f"{PORTAL}/{application_id}/bot" if application_id else PORTAL
    return (
        "Discord refused the connection because the bot's Message Content intent is off: switch on "
        f"Message Content Intent under Bot → Privileged Gateway Intents at {page}, then start Parley again "
        "(Parley stops, every platform with it, rather than run a Discord bot that cannot read mentions)"
    )
