"""Slack events in: which messages are for Parley (the engine's addressing rule decides, from facts
read off the event), each accepted into the engine's inbox the moment it is read.

Slack delivers one mention twice (as `app_mention` and as `message`), retries a delivery it thinks was
lost, and Socket Mode sends an envelope again when its ack came late: every copy names the same channel
and ts, which the inbox takes once, also across restarts.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.errors import SlackApiError

from adapters.slack.errors import error_code
from adapters.slack.files import download_files
from adapters.slack.markup import readable
from adapters.slack.people import People
from bot.addressing import Arrival, Rules
from bot.config import Settings
from bot.engine import Engine
from bot.models import Author, ConversationKey, Message

log = logging.getLogger(__name__)

PLATFORM = "slack"
# Messages that are people talking; every other subtype is an edit, a join, a bot post …
ANSWERED_SUBTYPES = {None, "file_share", "thread_broadcast"}
CHANGES = {"message_changed", "message_deleted"}  # a person's edit or deletion of a message


class Listeners:
    def __init__(self, engine: Engine, settings: Settings, people: People) -> None:
        self.engine = engine
        self.settings = settings
        self.people = people
        self.rules = Rules(reply_in_dms=True, thread_followups=settings.slack_thread_followups)
        self.token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""

    def register(self, app: AsyncApp) -> None:
        app.event("app_mention")(self.on_event)
        app.event("message")(self.on_event)

    async def on_event(self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext) -> None:
        if event.get("subtype") in CHANGES:
            await self._changed(event, context.bot_user_id or "")
            return
        if "user" not in event or "ts" not in event or "channel" not in event:
            return  # edits, deletions and other events about a message, not by a person
        bot_user = context.bot_user_id or ""
        channel, ts, thread_ts = event["channel"], event["ts"], event.get("thread_ts")
        direct = event.get("channel_type") == "im" or channel.startswith("D")
        # A direct message is answered where it was written; anything else in the thread it starts.
        key = ConversationKey(PLATFORM, channel, thread_ts if direct else thread_ts or ts)
        arrival = Arrival(
            key,
            from_bot=bool(event.get("bot_id")) or event["user"] == bot_user,
            ordinary=event.get("subtype") in ANSWERED_SUBTYPES,
            direct=direct,
            mentions_parley=event.get("type") == "app_mention" or f"<@{bot_user}>" in event.get("text", ""),
        )
        reason = await self.engine.addressing.reason(arrival, self.rules)
        if reason is None:
            return
        reply_to = {
            "channel": channel,
            "thread_ts": key.thread_id,
            "user": event["user"],
            # In a Slack Connect channel the asker belongs to another team than the installing one.
            "user_team": event.get("user_team") or event.get("team") or context.team_id,
            "team": context.team_id or body.get("team_id") or event.get("team"),
        }
        if reason == "autoreply" and not thread_ts and not direct:
            key = key.channel  # the channel's memory, answered in the message's thread
        if refusal := self.engine.access.refusal(key, Author(event["user"], ""), reply_to["team"]):
            self.engine.metrics.refused.labels("access").inc()
            if self.engine.access.tells(reason, private=True):  # an ephemeral message
                await self._refuse(context, channel, event["user"], key.thread_id, refusal)
            return
        try:
            message = await self._message(event, key, bot_user, direct, reply_to["team"])
        except Exception:
            log.exception("could not read a Slack message in %s", channel)
            return
        await self.engine.accept(message, reply_to)

    async def _refuse(
        self, context: AsyncBoltContext, channel: str, user: str, thread_ts: str | None, refusal: str
    ) -> None:
        """Only the person refused sees why (an ephemeral message); nothing of theirs is stored."""
        try:
            await context.client.chat_postEphemeral(
                channel=channel, user=user, text=refusal, thread_ts=thread_ts
            )
        except SlackApiError as error:
            log.warning("could not tell %s they may not use Parley: %s", user, error_code(error))

    async def _changed(self, event: dict[str, Any], bot_user: str) -> None:
        """A person edited or deleted a message: an answered question is answered again in place, or
        leaves memory (bot/controls.py decides)."""
        channel = str(event.get("channel", ""))
        key = ConversationKey(PLATFORM, channel)  # the inbox knows the message by channel and ts
        try:
            if event["subtype"] == "message_deleted":
                await self.engine.controls.deleted(key, str(event.get("deleted_ts", "")))
                return
            edited = event.get("message") or {}
            # A thread's parent also "changes" when someone replies to it: only a real edit counts.
            if not edited.get("edited") or not edited.get("user") or edited.get("bot_id"):
                return
            user = edited["user"]
            text = await readable(edited.get("text", ""), self.people, strip=bot_user)
            author = Author(user, await self.people.display_name(user))
            message = Message(key=key, author=author, text=text, id=str(edited.get("ts", "")))
            await self.engine.controls.edited(message, str(edited["edited"].get("ts", "")))
        except Exception:
            log.exception("could not take a change to a Slack message in %s", channel)

    async def _message(
        self, event: dict[str, Any], key: ConversationKey, bot_user: str, direct: bool, team: str | None
    ) -> Message:
        user = event["user"]
        text = await readable(event.get("text", ""), self.people, strip=bot_user)
        # Only commands need the manager check, so ordinary messages cost no extra lookups.
        manager = text.startswith("/") and await self.people.is_channel_manager(user, key.channel_id)
        zone = await self.people.timezone(user) if text.startswith("/") else None  # for /schedule
        author = Author(user, await self.people.display_name(user), is_channel_manager=manager, timezone=zone)
        files = event.get("files") or []
        return Message(
            key=key,
            author=author,
            text=text,
            id=event["ts"],
            attachments=(
                await download_files(files, self.token, self.settings.slack_api_url) if files else ()
            ),
            is_direct=direct,
            created_at=float(event["ts"]),
            server_id=team,
        )
