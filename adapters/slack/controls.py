"""A reply's controls on Slack, as Block Kit actions under it: Stop, Regenerate and a menu of other models.

The actions block's id carries the question it acts on (`parley_controls:123`), so a click works after a
restart. A posted reply shows Stop while it is written; Slack's streaming methods take blocks only when
a stream stops, so a streamed reply shows its controls once it has ended, and while it is written
`/parley stop` (or `/stop` in a mention) stops it. Clicks are
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
STOP = "parley_stop"
REGENERATE = "parley_regenerate"
REGENERATE_WITH = "parley_regenerate_with"
SECTION_LIMIT = 3000  # characters of text in a section block
OPTION_TEXT, OPTION_VALUE, OPTIONS = 75, 150, 100  # a static select's option text and value, and count
NOT_STORED = "Parley could not take this just now (its memory is unavailable); please try again shortly."


def actions(controls: ReplyControls, *, ended: bool = True) -> dict[str, Any]:
    """The actions block under a reply: Stop while it is written, Regenerate and the menu once it ended."""
    block = f"{BLOCK_PREFIX}{controls.question}"
    if not ended:
        stop = {"type": "button", "action_id": STOP, "text": {"type": "plain_text", "text": "Stop"}}
        return {"type": "actions", "block_id": block, "elements": [{**stop, "style": "danger"}]}
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
    return {"type": "actions", "block_id": block, "elements": elements}


def with_text(body: str, controls: ReplyControls, *, ended: bool) -> list[dict[str, Any]]:
    """A message's blocks: its mrkdwn text in sections (Slack shows blocks instead of the text), then the
    actions."""
    return [{"type": "section", "text": {"type": "mrkdwn", "text": part}} for part in _parts(body)] + [
        actions(controls, ended=ended)
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
        app.action(STOP)(self.on_stop)
        app.action(re.compile(f"^({REGENERATE}|{REGENERATE_WITH})$"))(self.on_regenerate)

    async def on_stop(
        self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()  # the reply's own final render then shows "Stopped." and Regenerate
        question, key, author = await self._clicked(body, action)
        if question is None:
            return
        refused = await self.engine.controls.stop(question, author, key)
        if refused is not None:
            await respond(text=refused.text, response_type="ephemeral", replace_original=False)

    async def _clicked(
        self, body: dict[str, Any], action: dict[str, Any]
    ) -> tuple[int | None, ConversationKey, Author]:
        """The question a click acts on (None: not one of ours), where it was clicked, and by whom."""
        block = str(action.get("block_id", ""))
        question = block.removeprefix(BLOCK_PREFIX)
        container = body.get("container") or {}
        channel = str(container.get("channel_id") or (body.get("channel") or {}).get("id", ""))
        thread_ts = container.get("thread_ts") or (body.get("message") or {}).get("thread_ts")
        user = body["user"]["id"]
        author = Author(
            user,
            await self.people.display_name(user),
            is_channel_manager=await self.people.is_channel_manager(user, channel),
        )
        ours = block.startswith(BLOCK_PREFIX) and question.isdigit()
        return (int(question) if ours else None), ConversationKey(PLATFORM, channel, thread_ts), author

    async def on_regenerate(
        self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()  # within Slack's 3 seconds; what follows is answered in the thread or privately
        question, key, author = await self._clicked(body, action)
        if question is None:
            return
        if refusal := await self.engine.controls.refusal(question, author, key):
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
            text=regenerate_line(question, model),
            id=f"action:{action.get('action_ts', '')}",  # the same click delivered again has the same ts
        )
        reply_to = {
            "channel": key.channel_id,
            "thread_ts": key.thread_id,
            "user": author.id,
            "user_team": body["user"].get("team_id") or team,
            "team": team,
        }
        try:
            await self.engine.accept(message, reply_to)
        except Exception:
            log.exception("could not store a regeneration asked for in %s", key)
            await respond(text=NOT_STORED, response_type="ephemeral", replace_original=False)
