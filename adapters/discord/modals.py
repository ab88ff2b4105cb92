"""`/prompt NAME` on Discord: a template with values missing is answered with a form (a modal, callback
type 9), whose submission (a MODAL_SUBMIT interaction) runs it.

The form's custom id names the template and each field's custom id its variable, so a submission
needs nothing kept in memory: it works after a restart too. discord.py would keep a sent modal in its
view store; ours are stopped before they are sent, and their submissions arrive in `on_submit`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord

from adapters.discord import commands as slash  # they import this module: read at call time
from adapters.discord.surface import NO_PINGS
from bot import templates
from bot.models import CommandResult
from bot.template_text import VALUE_LIMIT

if TYPE_CHECKING:
    from adapters.discord.port import DiscordPlatform

log = logging.getLogger(__name__)

FORM_PREFIX = "parley_prompt:"
TITLE_LIMIT = 45  # characters of a modal's title, and of a text input's label
LONG_VALUE = 100  # a field whose given value is longer than this is a paragraph field


async def run_prompt(platform: DiscordPlatform, interaction: discord.Interaction, args: str) -> None:
    """Within the 3 seconds: the form, or the reply (deferred, then accepted), or one sentence why not."""
    message = slash.incoming(interaction, "")
    prepared = await templates.prepare(platform.engine, message, args, _channel_name(interaction))
    if isinstance(prepared, templates.Form):
        await interaction.response.send_modal(_form(prepared))
    elif isinstance(prepared, CommandResult):
        await interaction.response.send_message(prepared.text, ephemeral=True, allowed_mentions=NO_PINGS)
    else:
        await slash.start_reply(platform, interaction, templates.question(message, prepared).text[1:])


async def on_submit(platform: DiscordPlatform, interaction: discord.Interaction) -> None:
    """A form's answers: fill the template in and answer it like /ask, or say why not, privately."""
    data: dict[str, Any] = interaction.data or {}  # type: ignore[assignment]
    custom_id = str(data.get("custom_id", ""))
    if not custom_id.startswith(FORM_PREFIX):
        return
    values = {
        str(item.get("custom_id")): str(item.get("value") or "")
        for row in data.get("components") or []
        for item in row.get("components") or []
    }
    message = slash.incoming(interaction, "")
    if refusal := platform.engine.access.refusal(message.key, message.author, message.server_id):
        await interaction.response.send_message(refusal, ephemeral=True, allowed_mentions=NO_PINGS)
        return
    name = custom_id.removeprefix(FORM_PREFIX)
    filled = await templates.fill(platform.engine, message, name, values, _channel_name(interaction))
    if isinstance(filled, CommandResult):
        await interaction.response.send_message(filled.text, ephemeral=True, allowed_mentions=NO_PINGS)
        return
    await slash.start_reply(platform, interaction, templates.question(message, filled).text[1:])


def _form(form: templates.Form) -> discord.ui.Modal:
    modal = discord.ui.Modal(title=_fit(f"Fill in {form.template}"), custom_id=FORM_PREFIX + form.template)
    for variable, given in form.fields:
        long = len(given) > LONG_VALUE or "\n" in given
        modal.add_item(
            discord.ui.TextInput(
                label=_fit(variable),
                custom_id=variable,
                default=given or None,
                required=True,
                max_length=VALUE_LIMIT,
                style=discord.TextStyle.paragraph if long else discord.TextStyle.short,
            )
        )
    modal.stop()  # answered statelessly, by its custom id (see the module's docstring)
    return modal


def _channel_name(interaction: discord.Interaction) -> str | None:
    return getattr(interaction.channel, "name", None)


def _fit(text: str) -> str:
    return text if len(text) <= TITLE_LIMIT else text[: TITLE_LIMIT - 1] + "…"
