"""Reading the conversation as the platform keeps it, for "what did we decide above?"."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, ClassVar

from bot.models import HistoryEntry
from bot.platform import HistoryUnavailable
from bot.skills import Question, SkillContext, SkillResult
from bot.untrusted import messages_block

log = logging.getLogger(__name__)

DEFAULT_MESSAGES = 50
MAX_MESSAGES = 100
MESSAGE_CHARS = 2000  # of each message, so one long paste cannot crowd out the rest
# Questions about the conversation itself, for models that cannot ask for the history on their own.
ABOUT_THE_CONVERSATION = re.compile(
    r"\b(above|earlier|so far|up there|this (channel|thread|conversation)|we (decided|agreed|said|discussed)"
    r"|did (we|they|someone|anyone) (decide|agree|say)|recap|summari[sz]e|catch me up|missed)\b",
    re.IGNORECASE,
)


class ChannelHistory:
    name = "channel_history"
    summary = "lets the model read the recent messages of this channel or thread"
    description = (
        "Read the most recent messages of the current channel or thread, including messages not addressed "
        "to you, with their authors, times and links. Use for questions about what was said or decided here."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_MESSAGES,
                "description": f"How many recent messages to read (default {DEFAULT_MESSAGES})",
            }
        },
    }
    default_mode = "auto"
    command = None

    async def aclose(self) -> None:
        return None

    def prefetch(self, question: Question) -> list[dict[str, Any]]:
        if question.mode == "on" or ABOUT_THE_CONVERSATION.search(question.text):
            return [{"limit": DEFAULT_MESSAGES}]
        return []

    def arguments_for(self, text: str) -> dict[str, Any]:
        return {}

    async def run(self, arguments: dict[str, Any], context: SkillContext) -> SkillResult:
        if context.platform is None:
            return SkillResult("The messages of this conversation cannot be read here.")
        try:
            limit = int(arguments.get("limit") or DEFAULT_MESSAGES)
        except (TypeError, ValueError):
            limit = DEFAULT_MESSAGES
        limit = max(1, min(MAX_MESSAGES, limit))
        try:
            entries = await context.platform.history(context.conversation, limit=limit)
        except HistoryUnavailable as error:
            log.warning("could not read the messages of %s: %s", context.conversation, error)
            return SkillResult(
                "The messages of this conversation could not be read.",
                note="Parley could not read the messages here, so this answer is without them.",
            )
        if not entries:
            return SkillResult("There are no earlier messages in this conversation.")
        return SkillResult(messages_block([_line(entry) for entry in entries]))


def _line(entry: HistoryEntry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry.created_at))
    who = f"{entry.author_name} (Parley)" if entry.by_parley else entry.author_name
    text = " ".join(entry.text.split())
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS] + "…"
    link = f" <{entry.permalink}>" if entry.permalink else ""
    return f"[{when}] {who}: {text}{link}"
