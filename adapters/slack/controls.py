"""A reply's controls on Slack: Regenerate and a menu of other models, as Block Kit actions under the reply.

The actions block's id carries the question it acts on (`parley_controls:123`), so a click works after a
restart. Slack's streaming methods take blocks only when a stream stops, so a reply shows its controls
once it has ended; while it is written, `/parley stop` (or `/stop` in a mention) stops it. Clicks are
acknowledged at once; a refusal goes only to the person who clicked, through the response URL.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from adapters.slack.listeners import PLATFORM
from adapters.slack.people import People
from bot.controls import ReplyControls, regenerate_line
from bot.engine import Engine
from bot.models import Author, ConversationKey, Message

log = logging.getLogger(__name__)

BLOCK_PREFIX = "parley_controls:"
REGENERATE = "parley_regenerate"
REGENERATE_WITH = "parley_regenerate_with"
SECTION_LIMIT = 3000  # characters of text in a section block
OPTION_TEXT, OPTION_VALUE, OPTIONS = 75, 150, 100  # a static select's option text and value, and count
NOT_STORED = "Parley could not take this just now (its memory is unavailable); please try again shortly."


def actions(controls: ReplyControls) -> dict[str, Any]:
    """The actions block under an ended reply."""
    elements: list[dict[str, Any]] = [
        {
            "type": "button",
            "action_id": REGENERATE,
            "text": {"type": "plain_text", "text": "Regenerate"},
            "value": str(controls.question),
        }
    ]
    models = [name for name in controls.models[1:] if len(name) <= OPTION_VALUE][:OPTIONS]
    if models:
        elements.append(
            {
                "type": "static_select",
                "action_id": REGENERATE_WITH,
                "placeholder": {"type": "plain_text", "text": "Answer again with…"},
                "options": [
                    {"text": {"type": "plain_text", "text": _shortened(name)}, "value": name}
                    for name in models
                ],
            }
        )
    return {"type": "actions", "block_id": f"{BLOCK_PREFIX}{controls.question}", "elements": elements}


def with_text(body: str, controls: ReplyControls) -> list[dict[str, Any]]:
    """A message's blocks: its mrkdwn text in sections (Slack shows blocks instead of the text), then the
    actions."""
    return [{"type": "section", "text": {"type": "mrkdwn", "text": part}} for part in _parts(body)] + [
        actions(controls)
    ]


def _parts(body: str) -> list[str]:
    """Cut at line ends into pieces a section holds."""
    parts: list[str] = []
    while len(body) > SECTION_LIMIT:
        cut = body.rfind("\n", 0, SECTION_LIMIT) + 1 or SECTION_LIMIT
        parts.append(body[:cut])
        body = body[cut:]
    return [part for part in [*parts, body] if part.strip()] or ["…"]


def _shortened(name: str) -> str:
    return name if len(name) <= OPTION_TEXT else name[: OPTION_TEXT - 1] + "…"


class ActionHandlers:
    def __init__(self, engine: Engine, people: People) -> None:
        self.engine = engine
        self.people = people

    def register(self, app: AsyncApp) -> None:
        app.action(re.compile(f"^({REGENERATE}|{REGENERATE_WITH})$"))(self.on_regenerate)

    async def on_regenerate(
        self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()  # within Slack's 3 seconds; what follows is answered in the thread or privately
        block = str(action.get("block_id", ""))
        question = block.removeprefix(BLOCK_PREFIX)
        if not block.startswith(BLOCK_PREFIX) or not question.isdigit():
            return
        container = body.get("container") or {}
        channel = str(container.get("channel_id") or (body.get("channel") or {}).get("id", ""))
        thread_ts = container.get("thread_ts") or (body.get("message") or {}).get("thread_ts")
        user = body["user"]["id"]
        author = Author(
            user,
            await self.people.display_name(user),
            is_channel_manager=await self.people.is_channel_manager(user, channel),
        )
        key = ConversationKey(PLATFORM, channel, thread_ts)
        if refusal := await self.engine.controls.refusal(int(question), author, key):
            await respond(text=refusal, response_type="ephemeral", replace_original=False)
            return
        model = (
            (action.get("selected_option") or {}).get("value")
            if action["action_id"] == REGENERATE_WITH
            else None
        )
        team = (body.get("team") or {}).get("id")
        message = Message(
            key=key,
            author=author,
            text=regenerate_line(int(question), model),
            id=f"action:{action.get('action_ts', '')}",  # the same click delivered again has the same ts
        )
        reply_to = {
            "channel": channel,
            "thread_ts": thread_ts,
            "user": user,
            "user_team": body["user"].get("team_id") or team,
            "team": team,
        }
        try:
            await self.engine.accept(message, reply_to)
        except Exception:
            log.exception("could not store a regeneration asked for in %s", channel)
            await respond(text=NOT_STORED, response_type="ephemeral", replace_original=False)
