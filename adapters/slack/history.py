"""What was said in a Slack channel or thread, whoever it was addressed to: conversations.history for a
channel (newest first, or forward from a message), conversations.replies for a thread (oldest first),
each paged by cursor past Slack's page size.

A thread that holds only its question so far (no one but Parley has replied) continues the channel it
was started in: Parley answers a mention in a channel in the mention's own thread, so "what did we
decide above?" there means the channel's messages before it. Its history is those messages, then the
thread's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.errors import error_code
from adapters.slack.markup import readable
from adapters.slack.people import People
from adapters.slack.workspace import Workspace
from bot.models import ConversationKey, HistoryEntry
from bot.platform import HistoryUnavailable

PAGE_SIZE = 200  # messages a call; Slack recommends no more than 200
# Messages people read: plain ones, files, broadcasts from threads, other apps' posts, /me. Joins, topic
# changes and the like are left out.
SHOWN_SUBTYPES = {None, "file_share", "thread_broadcast", "bot_message", "me_message"}

Message = dict[str, Any]


class History:
    def __init__(self, client: AsyncWebClient, people: People, workspace: Workspace) -> None:
        self._client = client
        self._people = people
        self._workspace = workspace

    async def read(
        self, key: ConversationKey, *, limit: int, before: str | None = None, after: str | None = None
    ) -> list[HistoryEntry]:
        """Up to `limit` messages, oldest first: the newest (before `before`), or the first after `after`."""
        if limit < 1:
            return []
        try:
            if key.thread_id is None:
                messages = await self._channel(key.channel_id, limit, before, after)
            else:
                messages = await self._thread(key.channel_id, key.thread_id, limit, before, after)
        except SlackApiError as error:
            self._people.note_missing_scope(error)
            method = error.response.api_url.rsplit("/", 1)[-1] if error.response is not None else "a call"
            raise HistoryUnavailable(f"Slack refused {method} in {key} ({error_code(error)})") from None
        return [await self._entry(key.channel_id, message) for message in messages]

    async def _channel(
        self, channel: str, limit: int, before: str | None, after: str | None
    ) -> list[Message]:
        kept: list[Message] = []
        if after is not None:  # forward from `after`: Slack gives the messages closest to `oldest`
            async for page in self._pages(
                self._client.conversations_history, channel=channel, oldest=after, limit=min(limit, PAGE_SIZE)
            ):
                for message in sorted(page, key=_ts):
                    if before is not None and _ts(message) >= Decimal(before):
                        return kept
                    if _shown(message):
                        kept.append(message)
                        if len(kept) == limit:
                            return kept
            return kept
        async for page in self._pages(
            self._client.conversations_history, channel=channel, latest=before, limit=min(limit, PAGE_SIZE)
        ):
            for message in sorted(page, key=_ts, reverse=True):
                if _shown(message):
                    kept.append(message)
                    if len(kept) == limit:
                        return kept[::-1]
        return kept[::-1]

    async def _thread(
        self, channel: str, thread_ts: str, limit: int, before: str | None, after: str | None
    ) -> list[Message]:
        """The thread's messages in range; first the channel's lead-in when it is only its question."""
        parent: Message | None = None
        newest: deque[Message] = deque(maxlen=limit)  # the whole range is read to keep its newest
        first: list[Message] = []
        async for page in self._pages(
            self._client.conversations_replies,
            channel=channel,
            ts=thread_ts,
            oldest=after,
            latest=before,
            limit=PAGE_SIZE,
        ):
            for message in sorted(page, key=_ts):
                if message.get("ts") == thread_ts:
                    parent = message
                if not _shown(message):
                    continue
                if after is None:
                    newest.append(message)
                elif len(first) < limit:
                    first.append(message)
            if len(first) == limit:
                break
        thread = list(newest) if after is None else first
        if after is not None and Decimal(after) >= Decimal(thread_ts):
            return thread  # nothing before the thread is in range
        if after is None and len(thread) == limit:
            return thread
        if parent is None:  # the range ends before the thread began
            parent = await self._parent(channel, thread_ts)
        if parent is None or not self._only_question(parent):
            return thread
        end = before if before is not None and Decimal(before) < Decimal(thread_ts) else thread_ts
        if after is None:
            return await self._channel(channel, limit - len(thread), end, None) + thread
        return (await self._channel(channel, limit, end, after) + thread)[:limit]

    async def _parent(self, channel: str, thread_ts: str) -> Message | None:
        answer = await self._client.conversations_replies(channel=channel, ts=thread_ts, limit=1)
        return next((m for m in answer.get("messages") or () if m.get("ts") == thread_ts), None)

    def _only_question(self, parent: Message) -> bool:
        """Whether nobody but Parley has replied in the thread."""
        parley = {self._workspace.bot_user_id, self._workspace.bot_id}
        return set(parent.get("reply_users") or ()) <= parley

    async def _pages(
        self, method: Callable[..., Awaitable[Any]], **args: Any
    ) -> AsyncIterator[list[Message]]:
        cursor = None
        while True:
            answer = await method(**args, cursor=cursor)
            yield list(answer.get("messages") or ())
            cursor = (answer.get("response_metadata") or {}).get("next_cursor")
            if not answer.get("has_more") or not cursor:
                return

    async def _entry(self, channel: str, message: Message) -> HistoryEntry:
        user = message.get("user")
        if user:
            name = await self._people.display_name(str(user))
        else:  # another app's post
            profile = message.get("bot_profile") or {}
            name = str(profile.get("name") or message.get("username") or message.get("bot_id") or "an app")
        text = await readable(str(message.get("text") or ""), self._people)
        files = [str(f.get("name") or f.get("title") or "a file") for f in message.get("files") or ()]
        if files:
            text = f"{text} [shared {', '.join(files)}]".strip()
        ts = str(message["ts"])
        return HistoryEntry(
            id=ts,
            author_id=str(user or message.get("bot_id") or ""),
            author_name=name,
            text=text,
            created_at=float(ts),
            by_parley=self._workspace.is_parley(message),
            permalink=self._workspace.permalink(channel, ts, message.get("thread_ts")),
        )


def _shown(message: Message) -> bool:
    return message.get("subtype") in SHOWN_SUBTYPES and bool(message.get("text") or message.get("files"))


def _ts(message: Message) -> Decimal:
    return Decimal(str(message.get("ts") or "0"))
