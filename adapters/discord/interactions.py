"""Slash commands within Discord's deadlines: the first answer within 3 seconds, and choices it accepts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import discord

from adapters.discord.surface import NO_PINGS
from adapters.discord.text import split_reply
from bot.models import CommandResult

# A command still working after this long is deferred: Discord drops an interaction not answered in 3 s,
# counted from when it sent it, so this leaves room for the gateway's and the callback's latency.
ANSWER_WITHIN = 1.0
# How long the model autocomplete waits for fresh listings before answering from older ones.
AUTOCOMPLETE_WAIT = 1.5
CHOICE_LIMIT = 100  # characters in an autocomplete choice's name and value


async def answer_command(interaction: discord.Interaction, work: Awaitable[CommandResult]) -> None:
    """Answer at once when the command is quick; otherwise defer (privately) and edit the answer in.

    A long answer continues in follow-ups. A public answer to a deferred command (a model switch that
    waited on a provider's model list) is also posted to the channel, since a private deferral stays
    private."""
    task = asyncio.ensure_future(work)
    done, _pending = await asyncio.wait({task}, timeout=ANSWER_WITHIN)
    if task not in done:
        await interaction.response.defer(ephemeral=True, thinking=True)
    result = await task
    pieces = split_reply(result.text)
    if task in done:
        await interaction.response.send_message(
            pieces[0] or "…", ephemeral=result.ephemeral, allowed_mentions=NO_PINGS
        )
        followups = pieces[1:]
    else:
        await interaction.edit_original_response(content=pieces[0] or "…", allowed_mentions=NO_PINGS)
        followups = pieces if not result.ephemeral else pieces[1:]
    for piece in followups:
        await interaction.followup.send(piece, ephemeral=result.ephemeral, allowed_mentions=NO_PINGS)
