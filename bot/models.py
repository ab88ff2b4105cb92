"""The platform-neutral message model every adapter speaks to the engine."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Where a conversation lives. A thread is its own conversation under its parent channel."""

    platform: str
    channel_id: str
    thread_id: str | None = None

    @property
    def channel(self) -> ConversationKey:
        """The channel a thread belongs to (itself when it is not a thread)."""
        return ConversationKey(self.platform, self.channel_id) if self.thread_id else self

    def __str__(self) -> str:
        base = f"{self.platform}:{self.channel_id}"
        return f"{base}:{self.thread_id}" if self.thread_id else base

    @classmethod
    def parse(cls, text: str) -> ConversationKey:
        """The key `str(key)` made, for platforms whose ids hold no colon (Discord's and Slack's)."""
        platform, _, rest = text.partition(":")
        channel, _, thread = rest.partition(":")
        return cls(platform, channel, thread or None)


@dataclass(frozen=True, slots=True)
class Author:
    id: str
    display_name: str
    # The adapter's word that this person may manage the channel (Manage Channels, workspace admin,
    # channel creator, the terminal user). Configured admins are added by the engine.
    is_channel_manager: bool = False
    role_ids: tuple[str, ...] = ()
    timezone: str | None = None  # the IANA zone the person set on the platform, when it says (Slack)


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file the user sent. Adapters download it (they hold the credentials); the engine decides its use."""

    filename: str
    content_type: str | None
    size: int
    data: bytes | None = None
    # Set by the adapter when it did not download the file (too large, download failed).
    unavailable_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    key: ConversationKey
    author: Author
    # Text as the model should read it: the bot's own mention stripped, other mentions as readable names.
    text: str
    id: str = ""
    attachments: tuple[Attachment, ...] = ()
    is_direct: bool = False
    created_at: float = field(default_factory=time.time)
    # The Discord server or Slack workspace it was written in (None: a DM on Discord, the terminal).
    server_id: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A platform request budget shared by every reply that draws on it: at most `capacity` requests in
    any `window` seconds, under the name `key` (a Discord channel, one Slack method in one workspace)."""

    key: str
    capacity: int
    window: float


@dataclass(frozen=True, slots=True)
class RenderBudget:
    """What the next render of one reply may cost; the surface's budget is read before every render.

    `min_interval` spaces renders of one reply. `bucket` names the one request budget every render
    draws on (a Discord channel): at most `capacity` requests per `window` seconds. Where renders draw
    on different budgets (Slack limits each method on its own), `edit` lists the requests the next
    render makes when it is not the final text and `final` those it makes when it is. `owed` names
    the budgets where a slot is kept for the reply's final text while it is under way, when that is
    not where a final would draw now (a Slack reply not yet posted will finish by chat.update). The
    engine's pacer enforces all of it, so adapters never need their own throttling.
    """

    min_interval: float = 0.0
    bucket: str | None = None
    capacity: int = 0
    window: float = 0.0
    edit: tuple[RateLimit, ...] | None = None
    final: tuple[RateLimit, ...] | None = None
    owed: tuple[RateLimit, ...] | None = None

    def cost(self, *, final: bool) -> tuple[RateLimit, ...]:
        """The requests the next render makes, each naming the budget it draws on."""
        listed = self.final if final else self.edit
        if listed is not None:
            return listed
        if self.bucket and self.capacity > 0:
            return (RateLimit(self.bucket, self.capacity, self.window),)
        return ()

    def owed_to_final(self) -> tuple[RateLimit, ...]:
        """The budgets that keep a slot for this reply's final text while it is under way."""
        return self.owed if self.owed is not None else self.cost(final=True)


class Surface(Protocol):
    """Where one reply is shown. The engine calls `start` once, then `render` with the whole text so far."""

    budget: RenderBudget

    async def start(self) -> None:
        """Show that a reply is on its way (typing indicator, status line)."""

    async def render(self, text: str, *, final: bool) -> int | Sequence[RateLimit]:
        """Show `text`: the whole reply so far. Each text extends the one before it, the final one too.

        Returns the requests it made, so the pacer can charge the shared budgets: the RateLimit of each,
        or just how many (charged to the budgets `budget.cost` named, any beyond them to the edits of the
        path the surface is on now; 0 when it sent nothing, or only requests no budget covers).
        """
        ...

    @property
    def refs(self) -> dict[str, Any] | None:
        """Where the reply is shown so far (JSON the adapter can reopen it from after a crash), or None
        while nothing is shown or when it cannot be edited later."""
        ...


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    """A conversation's effective settings: its own, else its channel's, else the defaults."""

    model: str
    system_prompt: str | None
    autoreply: bool
    skills: Mapping[str, str] = field(default_factory=dict)  # modes chosen here, by skill name


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A message of a channel or thread as its platform keeps it, whoever it was addressed to."""

    id: str
    author_id: str
    author_name: str
    text: str
    created_at: float  # Unix time
    by_parley: bool
    permalink: str


@dataclass(frozen=True, slots=True)
class CommandResult:
    text: str
    # True when only the caller needs to see it (help, listings, refusals); platforms show it privately.
    ephemeral: bool = True
