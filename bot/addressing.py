"""Whether a message is for Parley: one rule for every platform, from facts the adapters supply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import Connection, delete

from bot.models import ConversationKey, ConversationSettings
from bot.schema import meta
from bot.store import Store

MARK_PREFIX = "followed:"  # meta names of followed threads: "followed:slack:C1:1700000000.000100"


@dataclass(frozen=True, slots=True)
class Arrival:
    """What an adapter knows of an incoming message, in platform-neutral terms."""

    key: ConversationKey  # the conversation the answer belongs to
    from_bot: bool = False  # any bot's message, Parley's own included
    ordinary: bool = True  # a person's message, not an edit, a join, a pin or another system event
    direct: bool = False  # a direct message with Parley
    mentions_parley: bool = False
    replies_to_parley: bool = False  # a platform reply to one of Parley's messages


@dataclass(frozen=True, slots=True)
class Rules:
    """A platform's choices within the shared rule (its settings)."""

    reply_in_dms: bool = True
    # Later messages in a thread where Parley was mentioned are answered without a new mention.
    thread_followups: bool = False


class Addressing:
    def __init__(
        self, store: Store, settings_for: Callable[[ConversationKey], Awaitable[ConversationSettings]]
    ) -> None:
        self._store = store
        self._settings_for = settings_for

    async def reason(self, arrival: Arrival, rules: Rules) -> str | None:
        """Why Parley answers this message (direct, mention, reply, thread, autoreply), or None.

        A mention in a thread also makes Parley follow that thread, when the platform follows threads.
        """
        if arrival.from_bot or not arrival.ordinary:
            return None
        if arrival.direct:
            return "direct" if rules.reply_in_dms else None
        if arrival.mentions_parley:
            if rules.thread_followups and arrival.key.thread_id:
                await self.follow(arrival.key)
            return "mention"
        if arrival.replies_to_parley:
            return "reply"
        if rules.thread_followups and arrival.key.thread_id and await self._followed(arrival.key):
            await self.follow(arrival.key)  # touched: a thread in use is not forgotten
            return "thread"
        if (await self._settings_for(arrival.key)).autoreply:
            return "autoreply"
        return None

    async def follow(self, thread: ConversationKey) -> None:
        await self._store.set_meta(_mark(thread), "1")

    async def _followed(self, thread: ConversationKey) -> bool:
        return await self._store.get_meta(_mark(thread)) is not None


def _mark(thread: ConversationKey) -> str:
    return f"{MARK_PREFIX}{thread}"


def forget_quiet_threads(conn: Connection, before: float) -> int:
    """Stop following threads nobody touched (mentioned Parley in, or was answered in) since `before`;
    a mention there follows the thread again. How many were forgotten."""
    result = conn.execute(delete(meta).where(meta.c.name.startswith(MARK_PREFIX), meta.c.updated_at < before))
    return result.rowcount or 0
