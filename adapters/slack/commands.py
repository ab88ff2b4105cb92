"""`/parley SUBCOMMAND` and its model picker: acknowledged at once, answered through the response URL."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from adapters.slack.mrkdwn import escape, neutralize
from adapters.slack.people import People
from bot.engine import Engine
from bot.models import Author, CommandResult, ConversationKey, Message

PICK_ACTION = "parley_model_pick"
PICKER_OPTIONS = 100  # a static select holds at most 100 options
USAGE = "Try `/parley help`."


class SlashCommands:
    def __init__(self, engine: Engine, people: People) -> None:
        self.engine = engine
        self.people = people

    def register(self, app: AsyncApp) -> None:
        app.command("/parley")(self.on_command)
        app.action(PICK_ACTION)(self.on_pick)

    async def on_command(self, ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()  # within Slack's 3 seconds; the answer follows through the response URL
        line = " ".join(command.get("text", "").split()) or "help"
        message = await self._message(command["user_id"], command["channel_id"], line)
        if line.lower() == "model":
            await respond(**await self._picker(message.key))
            return
        await _send(respond, await self.engine.run_command(message, line))

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
    await respond(text=_plain(result.text), response_type="ephemeral" if result.ephemeral else "in_channel")


def _plain(text: str) -> str:
    """Command answers quote what people typed (system prompts, filters): never let them ping anyone."""
    return escape(neutralize(text))
