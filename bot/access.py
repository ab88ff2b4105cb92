"""Who may use Parley, from `[access]` in parley.toml, and how often one person may ask.

Adapters ask `Access.refusal` before they accept a message or run a command, with the facts they read
off the event (who, their roles, the channel, the server), so the policy lives here once. A refused
message is never stored and nothing of it reaches a provider.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.config import AccessLists, Settings
from bot.models import Author, CommandResult, ConversationKey, Message
from bot.schedule_store import AUTHOR_PREFIX

if TYPE_CHECKING:
    from bot.engine import Engine

NOT_ALLOWED = "You are not allowed to use Parley here; a Parley admin can change that."
NOT_HERE = "Parley is not available in this channel; a Parley admin can change that."
OPERATOR_PLATFORMS = frozenset({"console"})  # the terminal belongs to whoever runs Parley
RATE_WINDOW = 60.0


class Refused(Exception):
    """A reply that must not start (a budget used up, a rate limit); the message is the one sentence
    the person sees, and nothing is sent to the provider."""


class Access:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.lists: AccessLists = settings.access
        self._rate = settings.rate_limit_per_minute
        self._settings = settings
        self._clock = clock
        self._asked: dict[str, deque[float]] = {}

    def refusal(self, key: ConversationKey, author: Author, server_id: str | None = None) -> str | None:
        """The sentence for someone who may not use Parley here, or None when they may."""
        if key.platform in OPERATOR_PLATFORMS or self.admin(author):
            return None  # Parley admins cannot lock themselves out
        # A schedule's run is no person's message: a manager who could use Parley set it up. Where it
        # posts still has to be allowed.
        if not author.id.startswith(AUTHOR_PREFIX) and not self._person_allowed(author):
            return NOT_ALLOWED
        lists = self.lists
        if key.channel_id in lists.deny_channels or (server_id and server_id in lists.deny_servers):
            return NOT_HERE
        if lists.allow_channels and key.channel_id not in lists.allow_channels:
            return NOT_HERE
        if lists.allow_servers and server_id not in lists.allow_servers:
            return NOT_HERE
        return None

    def _person_allowed(self, author: Author) -> bool:
        roles = set(author.role_ids)
        lists = self.lists
        if author.id in lists.deny_users or roles & set(lists.deny_roles):
            return False
        return not (lists.allow_users or lists.allow_roles) or bool(
            author.id in lists.allow_users or roles & set(lists.allow_roles)
        )

    def admin(self, author: Author) -> bool:
        """Listed in ADMIN_USER_IDS, or holding a role in ADMIN_ROLE_IDS."""
        settings = self._settings
        return author.id in settings.admin_user_ids or any(
            r in settings.admin_role_ids for r in author.role_ids
        )

    def silent_in_channels(self) -> bool:
        """Where the platform cannot answer privately, whether a refusal says nothing."""
        return self.lists.refuse_in_channel == "silent"

    def tells(self, reason: str, private: bool) -> bool:
        """Whether a refused person is told (by `bot.addressing`'s reason the message was for Parley):
        only when they addressed Parley themselves, privately where the platform can, else as configured.
        A message Parley would only have read along (autoreply, a followed thread) gets silence."""
        if reason in ("autoreply", "thread"):
            return False
        return private or not self.silent_in_channels()

    def count_reply(self, key: ConversationKey, author: Author) -> None:
        """Count a reply this person starts; Refused, with when to try again, past RATE_LIMIT_PER_MINUTE."""
        if not self._rate or key.platform in OPERATOR_PLATFORMS:
            return
        now = self._clock()
        asked = self._asked.setdefault(f"{key.platform}:{author.id}", deque())
        while asked and asked[0] <= now - RATE_WINDOW:
            asked.popleft()
        if len(asked) >= self._rate:
            wait = max(1, round(asked[0] + RATE_WINDOW - now))
            plural = "" if self._rate == 1 else "s"
            raise Refused(
                f"You have asked Parley {self._rate} time{plural} in the last minute, the most allowed; "
                f"try again in {wait} seconds."
            )
        asked.append(now)

    def describe(self) -> str:
        """The lists as /access shows them."""
        lists = self.lists
        lines = ["Who may use Parley (from [access] in parley.toml):"]
        for label, values in (
            ("allowed users", lists.allow_users),
            ("denied users", lists.deny_users),
            ("allowed roles", lists.allow_roles),
            ("denied roles", lists.deny_roles),
            ("allowed channels", lists.allow_channels),
            ("denied channels", lists.deny_channels),
            ("allowed servers", lists.allow_servers),
            ("denied servers", lists.deny_servers),
        ):
            lines.append(f"{label}: {', '.join(values) if values else '(none)'}")
        where = "say nothing" if self.silent_in_channels() else "reply in the channel"
        lines.append(f"A refused mention where the platform has no private answer: {where}.")
        rate = f"{self._rate} per person per minute" if self._rate else "off"
        lines.append(f"Rate limit: {rate}.")
        if not any(value for name, value in lists if name != "refuse_in_channel"):
            lines.insert(1, "Everyone may use Parley everywhere.")
        return "\n".join(lines)


async def access_command(engine: Engine, message: Message, args: str) -> CommandResult:
    """`/access`: the lists, for Parley admins (they name people and places)."""
    if not engine.is_admin(message):
        return CommandResult("Only Parley admins can see who may use Parley.")
    return CommandResult(engine.access.describe())
