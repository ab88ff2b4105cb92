"""Discord's slash commands, generated from the one list in bot/commands.

A settings command is answered within Discord's 3 seconds (adapters/discord/interactions.py); a command
that starts a reply (/ask, a skill's /web) is deferred at once and goes to the engine like a message.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from adapters.discord.facts import author_of, interaction_key, interaction_server
from adapters.discord.interactions import AUTOCOMPLETE_WAIT, CHOICE_LIMIT, answer_command
from adapters.discord.modals import run_prompt
from adapters.discord.surface import NO_PINGS
from bot import commands, personas, templates
from bot.models import Message

if TYPE_CHECKING:
    from adapters.discord.port import DiscordPlatform
    from bot.engine import Engine

log = logging.getLogger(__name__)

DESCRIPTION_LIMIT = 100  # characters in a command's or an option's description
NOT_STORED = (
    "Parley could not take this command just now (its memory is unavailable); please try again shortly."
)


def install(tree: app_commands.CommandTree[discord.Client], platform: DiscordPlatform) -> None:
    """Add every command Parley offers on Discord to the tree."""
    for command in commands.registered(platform.engine.skills, "discord"):
        tree.add_command(_slash(command, platform))


def incoming(interaction: discord.Interaction, text: str) -> Message:
    channel = interaction.channel
    key = interaction_key(interaction)
    return Message(
        key=key,
        author=author_of(interaction.user, channel),
        text=text,
        id=str(interaction.id),
        server_id=interaction_server(interaction),
    )


def _slash(command: commands.Command, platform: DiscordPlatform) -> app_commands.Command:
    async def callback(interaction: discord.Interaction, **values: str | None) -> None:
        line = command.line([values.get(option.name) for option in command.options])
        asking = incoming(interaction, "")
        if refusal := platform.engine.access.refusal(asking.key, asking.author, asking.server_id):
            platform.engine.metrics.refused.labels("access").inc()
            await interaction.response.send_message(refusal, ephemeral=True, allowed_mentions=NO_PINGS)
            return
        if command.starts_reply:
            await start_reply(platform, interaction, line)
        elif command.name == templates.PROMPT and templates.is_run(line.partition(" ")[2]):
            await run_prompt(platform, interaction, line.partition(" ")[2])
        else:
            work = platform.engine.run_command(incoming(interaction, ""), line)
            await answer_command(interaction, work)

    # discord.py reads a command's options from its callback's signature: this one is made from the list.
    parameters = [inspect.Parameter("interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for option in command.options:
        parameters.append(
            inspect.Parameter(
                option.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=str if option.required else str | None,
                default=inspect.Parameter.empty if option.required else None,
            )
        )
    callback.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    if command.options:
        app_commands.describe(**{o.name: _fit(o.description) for o in command.options})(callback)
    if choices := {
        o.name: [app_commands.Choice(name=c, value=c) for c in o.choices]
        for o in command.options
        if o.choices
    }:
        app_commands.choices(**choices)(callback)
    pickers = {o.name: _model_names(platform) for o in command.options if o.models}
    pickers |= {o.name: _saved_names(platform, templates.choices) for o in command.options if o.templates}
    pickers |= {o.name: _saved_names(platform, personas.choices) for o in command.options if o.personas}
    if pickers:
        app_commands.autocomplete(**pickers)(callback)
    return app_commands.Command(name=command.name, description=_fit(command.summary), callback=callback)


async def start_reply(platform: DiscordPlatform, interaction: discord.Interaction, line: str) -> None:
    """Defer within the 3 seconds, then hand the command to the engine, which stores it at once."""
    deferred = await interaction.response.defer(thinking=True)
    original = deferred.message_id if deferred is not None else None
    reply_to = platform.deferred(interaction, original)
    try:
        task = await platform.engine.accept(incoming(interaction, "/" + line), reply_to)
    except Exception:
        log.exception("could not store command %s; telling its author", interaction.id)
        platform.abandon(reply_to)
        await interaction.edit_original_response(content=NOT_STORED, allowed_mentions=NO_PINGS)
        return
    if task is None:  # delivered before: that delivery answers it
        platform.abandon(reply_to)


def _model_names(
    platform: DiscordPlatform,
) -> Callable[[discord.Interaction, str], Awaitable[list[app_commands.Choice[str]]]]:
    engine = platform.engine

    async def model_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        key = incoming(interaction, "").key
        choices = await engine.model_choices(key, current, limit=25, wait=AUTOCOMPLETE_WAIT)
        active = (await engine.settings_for(key)).model
        return [
            app_commands.Choice(name=f"{n} (current)"[:CHOICE_LIMIT] if n == active else n, value=n)
            for n in choices
            if len(n) <= CHOICE_LIMIT  # Discord refuses the whole answer over a longer one; type it instead
        ]

    return model_names


def _saved_names(
    platform: DiscordPlatform, choices: Callable[[Engine, Message, str], Awaitable[list[str]]]
) -> Callable[[discord.Interaction, str], Awaitable[list[app_commands.Choice[str]]]]:
    """Autocomplete from what is saved here (templates, personas): `choices` gives the names (≤ 25)."""

    async def names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        found = await choices(platform.engine, incoming(interaction, ""), current)
        return [app_commands.Choice(name=name, value=name) for name in found if len(name) <= CHOICE_LIMIT]

    return names


def _fit(text: str) -> str:
    """A description as Discord shows it: a capital first letter, at most 100 characters."""
    text = text[:1].upper() + text[1:]
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1] + "…"
