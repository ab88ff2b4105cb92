"""The port every platform adapter implements: what the engine, skills and schedules may ask of a platform.

Discord, Slack and the terminal each register one under their platform name. Through it a reply can start
without an incoming event (a recovered message, a schedule), a reply cut short by a crash can be repaired,
and a skill can read what was said in a channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from bot.models import ConversationKey, HistoryEntry, Surface


class HistoryUnavailable(Exception):
    """The platform would not show a conversation's messages (a permission missing, a channel gone); the
    message says which and why, in one line."""


class Platform(Protocol):
    name: str  # the platform of the conversations it serves: ConversationKey.platform

    async def start(self) -> None:
        """Connect. Returns once messages can flow both ways; raises SetupError when the platform refuses
        the configuration (a bad token, a missing intent)."""
        ...

    async def stop(self) -> None:
        """Disconnect; the engine has already ended the replies under way."""
        ...

    async def wait_closed(self) -> None:
        """Returns when the platform has stopped on its own, past what it can recover from (a token
        revoked while running); the reason is in the log. `stop` needs no waiting on it."""
        ...

    async def surface_for(
        self, conversation: ConversationKey, reply_to: Mapping[str, Any] | None = None
    ) -> Surface:
        """A new reply in `conversation`. `reply_to` is what the adapter stored with the message being
        answered (None: a reply nobody asked for, such as a scheduled post)."""
        ...

    async def reopen(self, conversation: ConversationKey, refs: Mapping[str, Any]) -> Surface:
        """The reply a surface described with `refs`: its next final render replaces what it shows."""
        ...

    async def history(
        self,
        conversation: ConversationKey,
        *,
        limit: int,
        before: str | None = None,
        after: str | None = None,
    ) -> list[HistoryEntry]:
        """Up to `limit` messages of the channel or thread, oldest first, whoever they were addressed to:
        the newest ones, or those before/after a message id. HistoryUnavailable when it refuses."""
        ...

    async def permalink(self, conversation: ConversationKey, message_id: str) -> str: ...

    async def resolve_channel(self, near: ConversationKey, typed: str) -> ConversationKey | None:
        """The channel a person named in `near` (a channel mention, or `#name` in the same server or
        workspace), or None when there is none Parley can see."""
        ...

    async def may_post(self, conversation: ConversationKey) -> bool:
        """Whether Parley may post there now (Discord: View Channel and Send Messages; Slack: a member)."""
        ...
