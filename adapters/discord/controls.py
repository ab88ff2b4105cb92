"""A reply's buttons on Discord: Stop while it is written, then Regenerate and a menu of other models.

Each component's custom id carries the question it acts on (`parley:regen:123`), so a click works after
a restart without anything kept per message: the components are sent as display only, and clicks are
read in `on_component` from their ids. Discord drops a component interaction not answered within 3
seconds: a refusal is answered at once, privately; anything else is acknowledged without a message
first (the reply's own renders then change what shows).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from adapters.discord.facts import author_of, interaction_key
from bot.controls import ReplyControls, regenerate_line
from bot.models import Message

if TYPE_CHECKING:
    from adapters.discord.port import DiscordPlatform

log = logging.getLogger(__name__)

PREFIX = "parley"
STOP, REGENERATE, REGENERATE_WITH = "stop", "regen", "regen-with"
OPTION_LIMIT = 100  # characters in a select option's label and value
NOT_STORED = "Parley could not take this just now (its memory is unavailable); please try again shortly."


class Controls(discord.ui.View):
    """Components to show, never to dispatch: clicks are handled from their custom ids."""

    def __init__(self, controls: ReplyControls, *, ended: bool) -> None:
        super().__init__(timeout=None)
        question = controls.question
        if not ended:
            self.add_item(_button("Stop", STOP, question, discord.ButtonStyle.danger))
            return
        self.add_item(_button("Regenerate", REGENERATE, question, discord.ButtonStyle.secondary))
        models = [name for name in controls.models[1:] if len(name) <= OPTION_LIMIT][:25]
        if models:
            self.add_item(
                discord.ui.Select(
                    custom_id=custom_id(REGENERATE_WITH, question),
                    placeholder="Answer again with another model",
                    options=[discord.SelectOption(label=name, value=name) for name in models],
                    row=1,
                )
            )

    def is_dispatchable(self) -> bool:
        return False  # nothing to keep in discord.py's view store: on_component reads the ids


def custom_id(action: str, question: int) -> str:
    return f"{PREFIX}:{action}:{question}"


def parse(custom: str) -> tuple[str, int] | None:
    """(action, question) from a custom id of ours; None for anything else."""
    prefix, _, rest = custom.partition(":")
    action, _, question = rest.partition(":")
    if prefix != PREFIX or action not in (STOP, REGENERATE, REGENERATE_WITH) or not question.isdigit():
        return None
    return action, int(question)


def _button(
    label: str, action: str, question: int, style: discord.ButtonStyle
) -> discord.ui.Button[Controls]:
    return discord.ui.Button(label=label, custom_id=custom_id(action, question), style=style)


async def on_component(platform: DiscordPlatform, interaction: discord.Interaction) -> None:
    """A click on one of a reply's components."""
    data = interaction.data or {}
    parsed = parse(str(data.get("custom_id", "")))
    if parsed is None:
        return
    action, question = parsed
    controls = platform.engine.controls
    author = author_of(interaction.user, interaction.channel)
    key = interaction_key(interaction)
    if action == STOP:
        refused = await controls.stop(question, author, key)
        if refused is not None:
            await interaction.response.send_message(refused.text, ephemeral=True)
        else:
            await interaction.response.defer()  # the reply's final render shows "Stopped."
        return
    if refusal := await controls.refusal(question, author, key):
        await interaction.response.send_message(refusal, ephemeral=True)
        return
    values = data.get("values") or []
    model = str(values[0]) if action == REGENERATE_WITH and values else None
    message = Message(key=key, author=author, text=regenerate_line(question, model), id=str(interaction.id))
    # The new answer replies to the one whose button was clicked.
    reply_to: dict[str, object] = {"channel": str(interaction.channel_id)}
    if interaction.message is not None:
        reply_to["message"] = str(interaction.message.id)
    try:
        # Acknowledged first, within the 3 seconds whatever the database's load; the answer comes as a
        # reply of its own.
        await interaction.response.defer()
    except discord.HTTPException as error:  # a delivery seen again: the first one was acknowledged
        log.info("could not acknowledge click %s (%s); it is answered once", interaction.id, error.code)
    try:
        await platform.engine.accept(message, reply_to)  # a click delivered again is answered once
    except Exception:
        log.exception("could not store a regeneration asked for in %s", key)
        await interaction.followup.send(NOT_STORED, ephemeral=True)
