"""A comparison's ballot on Slack: a message with four buttons (A is better, B is better, tie, both bad)
in its thread, and the private answer to a vote, with the models' names.

The actions block's id carries the comparison (`parley_vote:12`) and each button's action id the choice
(`parley_vote_a`), well within Slack's 255 characters for both, so a click works after a restart. A vote
is acknowledged at once; its answer goes only to the voter, through the response URL.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.listeners import PLATFORM
from adapters.slack.mrkdwn import escape
from adapters.slack.people import People
from bot import arena
from bot.engine import Engine
from bot.models import Author, ConversationKey

log = logging.getLogger(__name__)

BLOCK_PREFIX = "parley_vote:"
ACTION_PREFIX = "parley_vote_"
BUTTONS = (("a", "A is better"), ("b", "B is better"), ("tie", "Tie"), ("bad", "Both are bad"))
NOT_STORED = "Parley could not take this vote just now (its memory is unavailable); please try again shortly."


def blocks(comparison: int, text: str) -> list[dict[str, Any]]:
    buttons = [
        {
            "type": "button",
            "action_id": f"{ACTION_PREFIX}{choice}",
            "text": {"type": "plain_text", "text": label},
            "value": choice,
        }
        for choice, label in BUTTONS
    ]
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": escape(text)}},
        {"type": "actions", "block_id": f"{BLOCK_PREFIX}{comparison}", "elements": buttons},
    ]


async def post(client: AsyncWebClient, conversation: ConversationKey, comparison: int, text: str) -> None:
    await client.chat_postMessage(
        channel=conversation.channel_id,
        thread_ts=conversation.thread_id,
        text=escape(text),
        blocks=blocks(comparison, text),
    )


class Votes:
    def __init__(self, engine: Engine, people: People) -> None:
        self.engine = engine
        self.people = people

    def register(self, app: AsyncApp) -> None:
        choices = "|".join(re.escape(choice) for choice in arena.CHOICES)
        app.action(re.compile(f"^{ACTION_PREFIX}({choices})$"))(self.on_vote)

    async def on_vote(
        self, ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()  # within Slack's 3 seconds; the answer goes to the voter alone
        comparison = str(action.get("block_id", "")).removeprefix(BLOCK_PREFIX)
        if not str(action.get("block_id", "")).startswith(BLOCK_PREFIX) or not comparison.isdigit():
            return
        choice = str(action["action_id"]).removeprefix(ACTION_PREFIX)
        container = body.get("container") or {}
        channel = str(container.get("channel_id") or (body.get("channel") or {}).get("id", ""))
        user = body["user"]["id"]
        voter = Author(user, await self.people.display_name(user))
        team = (body.get("team") or {}).get("id")
        if refusal := self.engine.access.refusal(ConversationKey(PLATFORM, channel), voter, team):
            await respond(text=refusal, response_type="ephemeral", replace_original=False)
            return
        try:
            told = await arena.vote(self.engine, int(comparison), voter, choice)
        except Exception:
            log.exception("could not store a vote on comparison %s", comparison)
            told = NOT_STORED
        await respond(text=told, response_type="ephemeral", replace_original=False)
