"""Who is talking: display names and channel-manager rights from users.info and conversations.info.

Answers are kept for a few minutes, so a busy channel costs a lookup per person, not per message.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.errors import error_code

CACHE_SECONDS = 300.0
log = logging.getLogger(__name__)


class People:
    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._users: dict[str, tuple[float, dict[str, Any]]] = {}
        self._creators: dict[str, tuple[float, str]] = {}
        self._missing_scopes: set[str] = set()  # said once each, not at every lookup

    async def _user(self, user_id: str) -> dict[str, Any]:
        cached = self._users.get(user_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            user = dict((await self._client.users_info(user=user_id)).get("user") or {})
        except SlackApiError as error:
            self.note_missing_scope(error)
            user = {}
        self._users[user_id] = (time.monotonic() + CACHE_SECONDS, user)
        return user

    async def display_name(self, user_id: str) -> str:
        user = await self._user(user_id)
        profile = user.get("profile") or {}
        return (
            profile.get("display_name")
            or profile.get("real_name")
            or user.get("real_name")
            or user.get("name")
        ) or user_id

    async def timezone(self, user_id: str) -> str | None:
        """The IANA zone the person set in Slack (users.info's `tz`), when known."""
        return (await self._user(user_id)).get("tz") or None

    async def is_channel_manager(self, user_id: str, channel: str) -> bool:
        """Workspace admins and owners manage every channel; a channel's creator manages that channel."""
        user = await self._user(user_id)
        if user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"):
            return True
        cached = self._creators.get(channel)
        if cached and cached[0] > time.monotonic():
            return cached[1] == user_id
        try:
            info = await self._client.conversations_info(channel=channel)
            creator = str((info.get("channel") or {}).get("creator") or "")
        except SlackApiError as error:
            self.note_missing_scope(error)
            creator = ""
        self._creators[channel] = (time.monotonic() + CACHE_SECONDS, creator)
        return creator == user_id

    def note_missing_scope(self, error: SlackApiError) -> None:
        """A scope the app was installed without is the operator's to fix: say which, once."""
        if error_code(error) != "missing_scope" or error.response is None:
            return
        needed = str(error.response.get("needed") or "a scope")
        if needed not in self._missing_scopes:
            self._missing_scopes.add(needed)
            log.warning(
                "Slack refused %s: the app lacks the %s scope; add it to the app (the manifest has it) "
                "and reinstall the app to the workspace",
                error.response.api_url.rsplit("/", 1)[-1],
                needed,
            )
