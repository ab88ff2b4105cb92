"""What a Discord event says in neutral terms: where it belongs and who sent it."""

from __future__ import annotations

import discord

from bot.models import Author, ConversationKey


def conversation_key(
    channel: discord.abc.Messageable | discord.abc.GuildChannel | discord.Thread,
) -> ConversationKey:
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return ConversationKey("discord", str(channel.parent_id), str(channel.id))
    return ConversationKey("discord", str(getattr(channel, "id", "dm")))


def interaction_key(interaction: discord.Interaction) -> ConversationKey:
    """Where a click or command belongs, from its channel id alone when the channel is not cached."""
    channel = interaction.channel
    return conversation_key(channel) if channel else ConversationKey("discord", str(interaction.channel_id))


def author_of(user: discord.User | discord.Member, channel: object) -> Author:
    is_manager = False
    roles: tuple[str, ...] = ()
    if isinstance(user, discord.Member):
        roles = tuple(str(role.id) for role in user.roles)
        permissions = (
            channel.permissions_for(user) if hasattr(channel, "permissions_for") else user.guild_permissions
        )
        is_manager = permissions.manage_channels
    return Author(str(user.id), user.display_name, is_channel_manager=is_manager, role_ids=roles)


def server_of(channel: object) -> str | None:
    """The server (guild) a channel belongs to; None in a DM."""
    guild = getattr(channel, "guild", None)
    return str(guild.id) if guild is not None else None


def interaction_server(interaction: discord.Interaction) -> str | None:
    """The server a click or command came from, from its guild id alone when the channel is not cached."""
    return str(interaction.guild_id) if interaction.guild_id else server_of(interaction.channel)
