"""`/parley prompt NAME` on Slack: a template with values missing opens a form (views.open with the
command's trigger_id, within its 3 seconds), whose view_submission runs it like `/parley web`.

The view carries what its submission needs (the template, the channel, the workspace) in its
private_metadata, so a form submitted after a restart still runs. What is wrong with a submission
(a value too long, a template deleted meanwhile) is shown in the form, under its first field.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.errors import SlackApiError

from adapters.slack import commands as slash  # it imports this module: read at call time
from adapters.slack.errors import error_code
from adapters.slack.mrkdwn import escape, neutralize
from bot import templates
from bot.models import CommandResult
from bot.template_text import VALUE_LIMIT

log = logging.getLogger(__name__)

FORM = "parley_prompt_form"
TITLE_LIMIT = 24  # characters of a modal's title (and of its submit and close buttons)
SHOWN_LIMIT = 2900  # characters of the filled-in question shown in the channel's post
LONG_VALUE = 100  # a field whose given value is longer than this is multi-line
NO_FORM = "Slack did not open the form ({error}); run /parley prompt {name} again."


class PromptForms:
    def __init__(self, commands: slash.SlashCommands) -> None:
        self.commands = commands
        self.engine = commands.engine

    def register(self, app: AsyncApp) -> None:
        app.view(FORM)(self.on_submit)

    async def run(
        self, args: str, command: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
    ) -> None:
        """The command was acknowledged: open the form, or ask the question, or say why not."""
        user, channel = command["user_id"], command["channel_id"]
        team = context.team_id or command.get("team_id")
        message = await self.commands._message(user, channel, "", team)
        channel_name = command.get("channel_name")
        prepared = await templates.prepare(self.engine, message, args, channel_name)
        if isinstance(prepared, CommandResult):
            await respond(text=self.commands.spoken(prepared.text), response_type="ephemeral")
            return
        if isinstance(prepared, templates.Form):
            place = {
                "channel": channel,
                "team": team,
                "user_team": command.get("team_id"),
                "name": channel_name,
            }
            try:
                await context.client.views_open(trigger_id=command["trigger_id"], view=_view(prepared, place))
            except SlackApiError as error:
                log.info("could not open the form of template %s: %s", prepared.template, error_code(error))
                shown = NO_FORM.format(error=error_code(error), name=prepared.template)
                await respond(text=shown, response_type="ephemeral")
            return
        teams = (team, command.get("team_id") or team)
        if not await self.commands.ask(
            context, user, channel, teams, _shown(args, prepared), f"/ask {prepared}"
        ):
            await respond(text=slash.CANNOT_POST, response_type="ephemeral")

    async def on_submit(
        self, ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        place = json.loads(view.get("private_metadata") or "{}")
        values = {
            action: str(state.get("value") or "")
            for block in (view.get("state") or {}).get("values", {}).values()
            for action, state in block.items()
        }
        user, channel = body["user"]["id"], str(place.get("channel", ""))
        first = next(iter(values), "")
        message = await self.commands._message(user, channel, "", place.get("team"))
        if refusal := self.engine.access.refusal(message.key, message.author, message.server_id):
            await ack(response_action="errors", errors={first: self.commands.spoken(refusal, mrkdwn=False)})
            return
        name = str(place.get("template", ""))
        filled = await templates.fill(self.engine, message, name, values, place.get("name"))
        if isinstance(filled, CommandResult):  # shown in the form, which stays open
            await ack(
                response_action="errors", errors={first: self.commands.spoken(filled.text, mrkdwn=False)}
            )
            return
        await ack()
        teams = (place.get("team"), place.get("user_team") or place.get("team"))
        if not await self.commands.ask(context, user, channel, teams, _shown(name, filled), f"/ask {filled}"):
            try:
                await context.client.chat_postEphemeral(channel=channel, user=user, text=slash.CANNOT_POST)
            except SlackApiError as error:
                log.warning(
                    "could not tell %s the template's question was not posted: %s", user, error_code(error)
                )


def _view(form: templates.Form, place: dict[str, Any]) -> dict[str, Any]:
    blocks = []
    for variable, given in form.fields:
        element: dict[str, Any] = {
            "type": "plain_text_input",
            "action_id": variable,
            "max_length": VALUE_LIMIT,
            "multiline": len(given) > LONG_VALUE or "\n" in given,
        }
        if given:
            element["initial_value"] = given
        blocks.append(
            {"type": "input", "block_id": variable, "label": _text(variable, 2000), "element": element}
        )
    return {
        "type": "modal",
        "callback_id": FORM,
        "title": _text(form.template, TITLE_LIMIT),
        "submit": _text("Ask", TITLE_LIMIT),
        "close": _text("Cancel", TITLE_LIMIT),
        "private_metadata": json.dumps({**place, "template": form.template}),
        "blocks": blocks,
    }


def _shown(args: str, question: str) -> str:
    name = args.split(maxsplit=1)[0].lower()
    text = question if len(question) <= SHOWN_LIMIT else question[: SHOWN_LIMIT - 1] + "…"
    return f"`/parley prompt {_plain(name)}`: {_plain(text)}"


def _text(text: str, limit: int) -> dict[str, str]:
    return {"type": "plain_text", "text": text if len(text) <= limit else text[: limit - 1] + "…"}


def _plain(text: str) -> str:
    return escape(neutralize(text))
