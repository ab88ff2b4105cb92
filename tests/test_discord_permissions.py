"""Manage Channels as Discord resolves it: guild roles, then the channel's permission overwrites.

Overwrites are set through the emulator, which tells the client with CHANNEL_UPDATE and puts the
resolved permissions into each interaction, as Discord does.
"""

from __future__ import annotations

from bot.engine import Engine
from bot.models import ConversationKey
from tests.support.discord_emulator import (
    ALICE,
    BOB,
    BOT_ID,
    GENERAL,
    MANAGE_CHANNELS,
    MANAGER_ROLE,
    RANDOM,
    THREAD,
    DiscordEmulator,
    overwrite,
    until,
)

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}
REFUSED = "Only channel managers and Parley admins can change web_search."
SWITCHED = "web_search in this channel is now on."


async def set_search(
    discord_api: DiscordEmulator, channel: int, user: dict[str, str], roles: list[int]
) -> str:
    """Run /search on in a channel as someone; returns what Parley answered."""
    asked = await discord_api.interact(
        "search", [{"name": "mode", "type": 3, "value": "on"}], channel=channel, user=user, roles=roles
    )
    await until(lambda: [c for c in discord_api.interaction_responses(asked) if c.status == 200])
    return str(discord_api.interaction_responses(asked)[0].json["data"]["content"])


async def search_mode(engine: Engine, channel: int, thread: int | None = None) -> str:
    key = ConversationKey("discord", str(channel), str(thread) if thread else None)
    skill = engine.skills.get("web_search")
    assert skill is not None
    return engine.skills.mode(skill, (await engine.settings_for(key)).skills)


async def test_a_role_denied_manage_channels_in_one_channel_cannot_change_it(
    discord_bot: Engine, discord_api: DiscordEmulator
) -> None:
    await discord_api.set_overwrites(RANDOM, [overwrite(MANAGER_ROLE, deny=MANAGE_CHANNELS)])
    assert await set_search(discord_api, RANDOM, ALICE, [MANAGER_ROLE]) == REFUSED
    assert await search_mode(discord_bot, RANDOM) == "off"
    assert await set_search(discord_api, GENERAL, ALICE, [MANAGER_ROLE]) == SWITCHED


async def test_a_person_denied_in_a_channel_is_refused_there_and_in_its_threads(
    discord_bot: Engine, discord_api: DiscordEmulator
) -> None:
    await discord_api.set_overwrites(GENERAL, [overwrite(ALICE["id"], deny=MANAGE_CHANNELS, member=True)])
    assert await set_search(discord_api, GENERAL, ALICE, [MANAGER_ROLE]) == REFUSED
    assert await set_search(discord_api, THREAD, ALICE, [MANAGER_ROLE]) == REFUSED
    assert (await search_mode(discord_bot, GENERAL), await search_mode(discord_bot, GENERAL, THREAD)) == (
        "off",
        "off",
    )
    assert await set_search(discord_api, RANDOM, ALICE, [MANAGER_ROLE]) == SWITCHED


async def test_a_person_allowed_in_one_channel_manages_only_that_channel(
    discord_bot: Engine, discord_api: DiscordEmulator
) -> None:
    await discord_api.set_overwrites(RANDOM, [overwrite(BOB["id"], allow=MANAGE_CHANNELS, member=True)])
    assert await set_search(discord_api, RANDOM, BOB, []) == SWITCHED
    assert await set_search(discord_api, GENERAL, BOB, []) == REFUSED


async def test_overwrites_also_hold_for_commands_sent_as_mentions(
    discord_bot: Engine, discord_api: DiscordEmulator
) -> None:
    await discord_api.set_overwrites(RANDOM, [overwrite(MANAGER_ROLE, deny=MANAGE_CHANNELS)])
    await discord_api.send_message(
        RANDOM, f"<@{BOT_ID}> /search on", mentions=[MENTION], roles=[MANAGER_ROLE]
    )
    await until(lambda: [m["content"] for m in discord_api.messages_in(RANDOM)] == [REFUSED])
    assert await search_mode(discord_bot, RANDOM) == "off"
    await discord_api.send_message(
        GENERAL, f"<@{BOT_ID}> /search on", mentions=[MENTION], roles=[MANAGER_ROLE]
    )
    await until(lambda: discord_api.messages_in(GENERAL))
    assert [m["content"] for m in discord_api.messages_in(GENERAL)] == [SWITCHED]
