"""`/parley SUBCOMMAND` and its model picker: acknowledged at once, answered through the response URL.

`/parley web QUERY` is the exception: everyone should see a searched answer, so it is posted in the
channel and streamed into that post's thread like the answer to a mention.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.errors import SlackApiError

from adapters.slack.errors import error_code
from adapters.slack.listeners import Listeners
from adapters.slack.mrkdwn import escape, neutralize
from adapters.slack.people import People
from bot.commands import COMMANDS
from bot.engine import Engine
from bot.models import Author, CommandResult, ConversationKey, Message

PICK_ACTION = "parley_model_pick"
PICKER_OPTIONS = 100  # a static select holds at most 100 options
log = logging.getLogger(__name__)
# The engine names its commands /model, /help …; on Slack they are subcommands of /parley.
_COMMAND_NAME = re.compile(rf"(?<![\w/])/({'|'.join(COMMANDS)})\b")


class SlashCommands:
    def __init__(self, engine: Engine, people: People, listeners: Listeners) -> None:
        self.engine = engine
        self.people = people
        self.listeners = listeners

    def register(self, app: AsyncApp) -> None:
        app.command("/parley")(self.on_command)
        app.action(PICK_ACTION)(self.on_pick)

    async def on_command(
        self, ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
    ) -> None:
        await ack()  # within Slack's 3 seconds; the answer follows through the response URL
        line = " ".join(command.get("text", "").split()) or "help"
        verb, _, rest = line.partition(" ")
        if verb.lower() == "web":
            await self._web(rest, command, respond, context)
            return
        message = await self._message(command["user_id"], command["channel_id"], line)
        if line.lower() == "model":
            await respond(**await self._picker(message.key))
            return
        await _send(respond, await self.engine.run_command(message, line))

    async def _web(
        self, query: str, command: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
    ) -> None:
        if not query:
            await respond(text="Say what to search for: `/parley web QUERY`.", response_type="ephemeral")
            return
        user, channel = command["user_id"], command["channel_id"]
        name = await self.people.display_name(user)
        try:
            posted = await context.client.chat_postMessage(
                channel=channel,
                text=f"*{_plain(name)}* searched the web: {_plain(query)}",
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as error:
            log.info("could not post a /parley web answer in %s: %s", channel, error_code(error))
            await respond(
                text="Parley can't post here; invite it with `/invite @Parley` and try again.",
                response_type="ephemeral",
            )
            return
        thread_ts = str(posted["ts"])
        author = Author(user, name)
        key = ConversationKey("slack", channel, thread_ts)
        message = Message(key=key, author=author, text=f"/web {query}", id=thread_ts)
        team_id = context.team_id or command.get("team_id") or ""
        await self.listeners.reply(
            message,
            context.client,
            team_id=team_id,
            recipient_team_id=command.get("team_id") or team_id,  # the caller's team
            thread_ts=thread_ts,
        )

    async def on_pick(
        self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()
        name = action["selected_option"]["value"]
        channel = (body.get("channel") or {}).get("id") or body.get("container", {}).get("channel_id", "")
        message = await self._message(body["user"]["id"], channel, f"model {name}")
        result = await self.engine.run_command(message, f"model {name}")
        if result.ephemeral:  # a refusal or an unknown name: shown in place of the picker
            await respond(text=_plain(result.text), replace_original=True)
        else:  # a change everyone in the channel should see
            await respond(text=_plain(result.text), response_type="in_channel", delete_original=True)

    async def _message(self, user_id: str, channel: str, line: str) -> Message:
        author = Author(
            user_id,
            await self.people.display_name(user_id),
            is_channel_manager=await self.people.is_channel_manager(user_id, channel),
        )
        return Message(key=ConversationKey("slack", channel), author=author, text="/" + line)

    async def _picker(self, key: ConversationKey) -> dict[str, Any]:
        names = await self.engine.model_choices(key, "", limit=PICKER_OPTIONS)
        current = (await self.engine.settings_for(key)).model
        text = f"This channel uses *{escape(current)}*."
        if not names:
            return {"text": f"{text} No other models are available.", "response_type": "ephemeral"}
        options = [{"text": {"type": "plain_text", "text": name[:75]}, "value": name} for name in names]
        select = {
            "type": "static_select",
            "action_id": PICK_ACTION,
            "placeholder": {"type": "plain_text", "text": "Switch model"},
            "options": options,
        }
        if current in names:
            select["initial_option"] = options[names.index(current)]
        return {
            "text": text,
            "response_type": "ephemeral",
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
                {"type": "actions", "elements": [select]},
            ],
        }


async def _send(respond: AsyncRespond, result: CommandResult) -> None:
    text = _COMMAND_NAME.sub(r"/parley \1", _plain(result.text))
    await respond(text=text, response_type="ephemeral" if result.ephemeral else "in_channel")


def _plain(text: str) -> str:
    """Command answers quote what people typed (system prompts, filters): never let them ping anyone."""
    return escape(neutralize(text))
