"""Slack events in, engine replies out: which messages Parley answers, and each one exactly once."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.files import download_files
from adapters.slack.people import People
from adapters.slack.surface import SlackSurface
from bot.config import Settings
from bot.engine import Engine
from bot.models import Author, ConversationKey, Message

log = logging.getLogger(__name__)

PLATFORM = "slack"
# Messages that are people talking; every other subtype is an edit, a join, a bot post …
ANSWERED_SUBTYPES = {None, "file_share", "thread_broadcast"}
_ENTITY = re.compile(r"<([@#!])?([^<>|]*)(?:\|([^<>]*))?>")


class Listeners:
    """Holds what every event needs: the engine, the people directory and the bot token for files."""

    def __init__(self, engine: Engine, settings: Settings, people: People) -> None:
        self.engine = engine
        self.settings = settings
        self.people = people
        self.token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
        self.streamless_teams: set[str] = set()  # workspaces where Slack refused native streams
        self.in_flight: set[asyncio.Task[None]] = set()  # Bolt runs each listener in a task of its own

    async def finish(self, *, cancel: bool) -> None:
        """Let replies under way end (or cut them off on shutdown) before the engine closes."""
        tasks = set(self.in_flight)
        if cancel:
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def register(self, app: AsyncApp) -> None:
        app.event("app_mention")(self.on_mention)
        app.event("message")(self.on_message)

    async def on_mention(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        if event.get("bot_id") or event.get("subtype") not in ANSWERED_SUBTYPES:
            return
        await self._answer(body, event, context, thread_ts=event.get("thread_ts") or event["ts"])

    async def on_message(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        if event.get("bot_id") or event.get("subtype") not in ANSWERED_SUBTYPES or "user" not in event:
            return
        if event.get("user") == context.bot_user_id:
            return
        channel, thread_ts = event["channel"], event.get("thread_ts")
        if event.get("channel_type") == "im":
            await self._answer(body, event, context, thread_ts=thread_ts)
        elif f"<@{context.bot_user_id}>" in event.get("text", ""):
            # The same mention also arrives as app_mention; whichever comes first is answered.
            await self._answer(body, event, context, thread_ts=thread_ts or event["ts"])
        elif thread_ts and self.settings.slack_thread_followups and await self._followed(channel, thread_ts):
            await self._answer(body, event, context, thread_ts=thread_ts)
        elif (await self.engine.settings_for(_key(channel, thread_ts))).autoreply:
            await self._answer(
                body, event, context, thread_ts=thread_ts or event["ts"], top_level=not thread_ts
            )

    async def _followed(self, channel: str, thread_ts: str) -> bool:
        return await self.engine.store.get_meta(_thread_mark(channel, thread_ts)) is not None

    async def _answer(
        self,
        body: dict[str, Any],
        event: dict[str, Any],
        context: AsyncBoltContext,
        *,
        thread_ts: str | None,
        top_level: bool = False,
    ) -> None:
        """Answer once: Slack retries deliveries and sends one mention twice, also across our restarts."""
        channel = event["channel"]
        store = self.engine.store
        if body.get("event_id") and not await store.claim_event("slack-event", body["event_id"]):
            return
        if not await store.claim_event("slack-message", f"{channel}:{event['ts']}"):
            return
        try:
            message = await self._message(event, context, thread_ts=None if top_level else thread_ts)
        except Exception:
            log.exception("could not read a Slack message in %s", channel)
            return
        team_id = context.team_id or event.get("team") or ""
        await self.reply(
            message,
            context.client,
            team_id=team_id,
            # In a Slack Connect channel the asker belongs to another team than the installing one.
            recipient_team_id=event.get("user_team") or event.get("team") or team_id,
            thread_ts=thread_ts,
            followed=event.get("channel_type") != "im",
        )

    async def reply(
        self,
        message: Message,
        client: AsyncWebClient,
        *,
        team_id: str,
        thread_ts: str | None,
        recipient_team_id: str | None = None,
        followed: bool = True,
    ) -> None:
        """Stream the engine's answer into `thread_ts` (or the channel); `followed` threads are answered
        again without a mention. `team_id` is the installing workspace, `recipient_team_id` the asker's."""
        channel = message.key.channel_id
        if thread_ts and followed:
            await self.engine.store.set_meta(_thread_mark(channel, thread_ts), "1")
        surface = SlackSurface(
            client,
            channel=channel,
            thread_ts=thread_ts,
            team_id=team_id,
            user_id=message.author.id,
            recipient_team_id=recipient_team_id,
            min_interval=self.settings.slack_render_interval,
            streamless_teams=self.streamless_teams,
            room=self.engine.pacer.has_room,
            clock=self.engine.clock,
        )
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        try:
            await self.engine.handle(message, surface)
        finally:
            self.in_flight.discard(task)
            await surface.close()

    async def _message(
        self, event: dict[str, Any], context: AsyncBoltContext, *, thread_ts: str | None
    ) -> Message:
        user, channel = event["user"], event["channel"]
        text = await self._readable(event.get("text", ""), context.bot_user_id or "")
        # Only commands need the manager check, so ordinary messages cost no extra lookups.
        manager = text.startswith("/") and await self.people.is_channel_manager(user, channel)
        author = Author(user, await self.people.display_name(user), is_channel_manager=manager)
        files = event.get("files") or []
        return Message(
            key=_key(channel, thread_ts),
            author=author,
            text=text,
            id=event["ts"],
            attachments=(
                await download_files(files, self.token, self.settings.slack_api_url) if files else ()
            ),
            is_direct=event.get("channel_type") == "im",
            created_at=float(event["ts"]),
        )

    async def _readable(self, text: str, bot_user_id: str) -> str:
        """Slack's markup as a person reads it: the bot's mention gone, other people by name."""
        names: dict[str, str] = {}
        for match in _ENTITY.finditer(text):
            if match.group(1) == "@" and match.group(2) != bot_user_id and not match.group(3):
                names[match.group(2)] = await self.people.display_name(match.group(2))

        def plain(match: re.Match[str]) -> str:
            sigil, target, label = match.group(1), match.group(2), match.group(3)
            if sigil == "@":
                return "" if target == bot_user_id else f"@{label or names.get(target, target)}"
            if sigil == "#":
                return f"#{label or target}"
            if sigil == "!":
                return f"@{label or target.split('^')[0]}"
            return f"{label} ({target})" if label and label != target else target

        text = _ENTITY.sub(plain, text)
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        return re.sub(r"[ \t]{2,}", " ", text).strip()


def _key(channel: str, thread_ts: str | None) -> ConversationKey:
    return ConversationKey(PLATFORM, channel, thread_ts)


def _thread_mark(channel: str, thread_ts: str) -> str:
    return f"slack:thread:{channel}:{thread_ts}"
