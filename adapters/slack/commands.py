"""`/parley SUBCOMMAND`, generated from the engine's one list of commands, and its model picker.

Settings commands are acknowledged at once and answered through the response URL. A command that starts
a reply (`/parley web QUERY`, `/parley read URL`) is for everyone to see: the question is posted in the
channel and answered in that post's thread, which Parley then follows like a mention's.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.errors import SlackApiError

from adapters.slack.errors import error_code
from adapters.slack.listeners import PLATFORM
from adapters.slack.modals import PromptForms
from adapters.slack.mrkdwn import escape, neutralize
from adapters.slack.people import People
from bot import templates
from bot.commands import Command, registered
from bot.engine import Engine
from bot.models import Author, CommandResult, ConversationKey, Message

PICK_ACTION = "parley_model_pick"
PICKER_OPTIONS = 100  # a static select holds at most 100 options
CANNOT_POST = "Parley can't post here; invite it with `/invite @Parley` and try again."
# Only the verb is cut off: what follows keeps its lines and spacing (system prompts, templates).
VERB_AND_REST = re.compile(r"\s*(\S*)\s*(.*?)\s*", re.DOTALL)
log = logging.getLogger(__name__)


class SlashCommands:
    def __init__(self, engine: Engine, people: People) -> None:
        self.engine = engine
        self.people = people
        self.commands = {command.name: command for command in registered(engine.skills, PLATFORM)}
        # The engine names its commands /model, /help …; on Slack they are subcommands of /parley.
        names = "|".join(re.escape(name) for name in self.commands)
        self._command_name = re.compile(rf"(?<![\w/])/({names})\b")
        self.prompts = PromptForms(self)

    def register(self, app: AsyncApp) -> None:
        app.command("/parley")(self.on_command)
        app.action(PICK_ACTION)(self.on_pick)
        self.prompts.register(app)

    async def on_command(
        self, ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
    ) -> None:
        await ack()  # within Slack's 3 seconds; the answer follows through the response URL
        team = context.team_id or command.get("team_id")
        asking = ConversationKey(PLATFORM, command["channel_id"])
        if refusal := self.engine.access.refusal(asking, Author(command["user_id"], ""), team):
            self.engine.metrics.refused.labels("access").inc()
            await respond(text=refusal, response_type="ephemeral")
            return
        typed = VERB_AND_REST.fullmatch(command.get("text", ""))
        assert typed is not None  # the pattern matches any text
        verb, rest = typed[1] or "help", typed[2]
        line = f"{verb} {rest}" if rest else verb
        chosen = self.commands.get(verb.lower())
        if verb.lower() == templates.PROMPT and templates.is_run(rest):  # a form may ask for values
            await self.prompts.run(rest, command, respond, context)
            return
        if chosen is not None and chosen.starts_reply:
            await self._start_reply(chosen, rest, command, respond, context)
            return
        message = await self._message(command["user_id"], command["channel_id"], line, team)
        if line.lower() == "model":
            await respond(**await self._picker(message.key))
            return
        await self._send(respond, await self.engine.run_command(message, line))

    async def _start_reply(
        self,
        chosen: Command,
        text: str,
        command: dict[str, Any],
        respond: AsyncRespond,
        context: AsyncBoltContext,
    ) -> None:
        if not text and any(option.required for option in chosen.options):
            usage = f"Usage: `/parley {chosen.usage}` ({chosen.summary})."
            await respond(text=usage, response_type="ephemeral")
            return
        shown = f"`/parley {chosen.name}`" + (f": {_plain(text)}" if text else "")
        # The stream's recipient team is the caller's (slash command payloads carry no user_team).
        teams = (context.team_id or command.get("team_id"), command.get("team_id") or context.team_id)
        asked = await self.ask(
            context, command["user_id"], command["channel_id"], teams, shown, "/" + chosen.line([text])
        )
        if not asked:
            await respond(text=CANNOT_POST, response_type="ephemeral")

    async def ask(
        self,
        context: AsyncBoltContext,
        user: str,
        channel: str,
        teams: tuple[str | None, str | None],
        shown: str,
        text: str,
    ) -> bool:
        """Post the question where everyone sees it, then accept it as the message its thread answers;
        False when Parley cannot post there. `teams`: the workspace's, and the asker's."""
        name = await self.people.display_name(user)
        try:
            posted = await context.client.chat_postMessage(
                channel=channel,
                text=f"*{_plain(name)}* asked with {shown}",
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as error:
            log.info("could not post a /parley question in %s: %s", channel, error_code(error))
            return False
        ts = str(posted["ts"])
        key = ConversationKey(PLATFORM, channel, ts)
        team, user_team = teams
        message = Message(
            key=key,
            author=Author(user, name),
            text=text,
            id=ts,
            created_at=float(ts),
            server_id=team,
        )
        reply_to = {"channel": channel, "thread_ts": ts, "user": user, "user_team": user_team, "team": team}
        await self.engine.accept(message, reply_to)
        await self.engine.addressing.follow(key)
        return True

    async def on_pick(
        self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()
        name = action["selected_option"]["value"]
        channel = (body.get("channel") or {}).get("id") or body.get("container", {}).get("channel_id", "")
        team = (body.get("team") or {}).get("id") or body["user"].get("team_id")
        message = await self._message(body["user"]["id"], channel, f"model {name}", team)
        result = await self.engine.run_command(message, f"model {name}")
        if result.ephemeral:  # a refusal or an unknown name: shown in place of the picker
            await respond(text=_plain(result.text), replace_original=True)
        else:  # a change everyone in the channel should see
            await respond(text=_plain(result.text), response_type="in_channel", delete_original=True)

    async def _message(self, user_id: str, channel: str, line: str, team: str | None) -> Message:
        author = Author(
            user_id,
            await self.people.display_name(user_id),
            is_channel_manager=await self.people.is_channel_manager(user_id, channel),
            timezone=await self.people.timezone(user_id),
        )
        return Message(key=ConversationKey(PLATFORM, channel), author=author, text="/" + line, server_id=team)

    async def _send(self, respond: AsyncRespond, result: CommandResult) -> None:
        text = self.spoken(result.text)
        await respond(text=text, response_type="ephemeral" if result.ephemeral else "in_channel")

    def spoken(self, text: str, *, mrkdwn: bool = True) -> str:
        """An answer as Slack shows it: the engine's /model … named as /parley model …, pinging no one
        (plain text, as a form's field errors are, needs no escaping)."""
        return self._command_name.sub(r"/parley \1", _plain(text) if mrkdwn else text)

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


def _plain(text: str) -> str:
    """Command answers quote what people typed (system prompts, filters): never let them ping anyone."""
    return escape(neutralize(text))
