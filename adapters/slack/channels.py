"""Channels a person names for Parley to post in (a schedule's `--to`): a mention or `#name`, resolved
with conversations.list, and whether Parley is a member there (conversations.info's `is_member`)."""

from __future__ import annotations

import re
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.listeners import PLATFORM
from adapters.slack.people import People
from bot.models import ConversationKey

LIST_PAGE = 200  # conversations.list: Slack recommends no more than 200 a page
_MENTION = re.compile(r"<#(?P<id>[CG][A-Z0-9]+)(?:\|[^>]*)?>")


class Channels:
    def __init__(self, client: AsyncWebClient, people: People) -> None:
        self._client = client
        self._people = people

    async def resolve(self, typed: str) -> ConversationKey | None:
        """`<#C123|name>`, `<#C123>` (how Slack writes a channel mention) or `#name`."""
        typed = typed.strip()
        if mention := _MENTION.fullmatch(typed):
            info = await self._info(mention["id"])
            return ConversationKey(PLATFORM, mention["id"]) if info else None
        if not typed.startswith("#"):
            return None
        wanted = typed[1:].lower()
        cursor = None
        try:
            while True:
                answer = await self._client.conversations_list(
                    types="public_channel,private_channel",
                    exclude_archived=True,
                    limit=LIST_PAGE,
                    cursor=cursor,
                )
                for channel in answer.get("channels") or ():
                    if str(channel.get("name", "")).lower() == wanted:
                        return ConversationKey(PLATFORM, str(channel["id"]))
                cursor = (answer.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    return None
        except SlackApiError as error:
            self._people.note_missing_scope(error)
            return None

    async def may_post(self, conversation: ConversationKey) -> bool:
        """A bot posts only where it is a member (without the chat:write.public scope, which Parley does
        not ask for); a direct message with it always takes its posts."""
        info = await self._info(conversation.channel_id)
        return bool(info and (info.get("is_im") or info.get("is_member")))

    async def _info(self, channel: str) -> dict[str, Any] | None:
        try:
            return dict((await self._client.conversations_info(channel=channel)).get("channel") or {})
        except SlackApiError as error:
            self._people.note_missing_scope(error)
            return None
