"""A comparison's ballot on Discord: four buttons under one message (A is better, B is better, tie, both
bad), and the private answer to a vote, with the models' names.

Each button's custom id carries the comparison and the choice (`parley:vote:12:a`, well under Discord's
100 characters; four buttons fill one row of five), so a click works after a restart with nothing kept
per message. A vote is acknowledged at once, privately ("thinking…" only the voter sees), then answered
in place.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from adapters.discord.facts import author_of, interaction_key, interaction_server
from adapters.discord.surface import NO_PINGS
from bot import arena

if TYPE_CHECKING:
    from adapters.discord.port import DiscordPlatform

log = logging.getLogger(__name__)

PREFIX = "parley:vote"
BUTTONS = (
    ("a", "A is better", discord.ButtonStyle.primary),
    ("b", "B is better", discord.ButtonStyle.primary),
    ("tie", "Tie", discord.ButtonStyle.secondary),
    ("bad", "Both are bad", discord.ButtonStyle.secondary),
)
NOT_STORED = "Parley could not take this vote just now (its memory is unavailable); please try again shortly."


class Ballot(discord.ui.View):
    """Buttons to show, never to dispatch: votes are read in `on_component` from their ids."""

    def __init__(self, comparison: int) -> None:
        super().__init__(timeout=None)
        for choice, label, style in BUTTONS:
            self.add_item(
                discord.ui.Button(label=label, custom_id=custom_id(comparison, choice), style=style)
            )

    def is_dispatchable(self) -> bool:
        return False


def custom_id(comparison: int, choice: str) -> str:
    return f"{PREFIX}:{comparison}:{choice}"


def parse(custom: str) -> tuple[int, str] | None:
    """(comparison, choice) from a ballot's custom id; None for anything else."""
    head, _, rest = custom.rpartition(":")
    prefix, _, comparison = head.rpartition(":")
    if prefix != PREFIX or not comparison.isdigit() or rest not in arena.CHOICES:
        return None
    return int(comparison), rest


async def post(channel: discord.abc.Messageable, comparison: int, text: str) -> None:
    await channel.send(text, view=Ballot(comparison), allowed_mentions=NO_PINGS)


async def on_component(platform: DiscordPlatform, interaction: discord.Interaction) -> None:
    """A click on a ballot's button."""
    data = interaction.data or {}
    parsed = parse(str(data.get("custom_id", "")))
    if parsed is None:
        return
    comparison, choice = parsed
    engine = platform.engine
    channel = interaction.channel
    author = author_of(interaction.user, channel)
    key = interaction_key(interaction)
    server = interaction_server(interaction)
    if refusal := engine.access.refusal(key, author, server):
        await interaction.response.send_message(refusal, ephemeral=True, allowed_mentions=NO_PINGS)
        return
    try:
        await interaction.response.defer(ephemeral=True, thinking=True)
    except discord.HTTPException as error:  # a delivery seen again: the first one was acknowledged
        log.info("could not acknowledge vote %s (%s)", interaction.id, error.code)
        return
    try:
        told = await arena.vote(engine, comparison, author, choice)
    except Exception:
        log.exception("could not store a vote on comparison %d", comparison)
        told = NOT_STORED
    await interaction.edit_original_response(content=told, allowed_mentions=NO_PINGS)
