"""A reply in Discord: typing until the first text, then messages edited as it grows, past 2,000 chars.

Every message a reply occupies is a message of the bot's in a channel, interaction responses included
(they are public), so `refs` lists their ids and a reply can be finished through the channel's own
endpoints after a restart, whatever showed it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import discord

from adapters.discord.controls import Controls
from adapters.discord.text import reopening, split_reply
from bot.controls import ReplyControls
from bot.models import RateLimit, RenderBudget

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
TYPING_REFRESH = 8.0  # Discord shows "is typing" for 10 s after each trigger
TOKEN_SECONDS = 15 * 60.0  # how long Discord accepts an interaction's token for edits and follow-ups
TOKEN_MARGIN = 60.0  # move to channel messages this long before, while the token can still edit
WAITING_NOTE = "_The answer will follow in a new message in this channel._"
# The interaction's original response, as the webhook routes name it (discord.py types ids as int).
ORIGINAL: Any = "@original"


def channel_budget(channel_id: int) -> RenderBudget:
    # About 5 requests per 5 s per channel, sends and edits together; at least 1 s between edits of one reply.
    return RenderBudget(min_interval=1.0, bucket=f"discord:{channel_id}", capacity=5, window=5.0)


def interaction_budget() -> RenderBudget:
    # Discord limits interaction webhooks per token, and a token carries one reply: an edit a second.
    return RenderBudget(min_interval=1.0)


def reference(channel_id: int, message_id: int | None) -> discord.MessageReference | None:
    """A reply's link to the message it answers; sent even when that message was deleted meanwhile."""
    if message_id is None:
        return None
    return discord.MessageReference(message_id=message_id, channel_id=channel_id, fail_if_not_exists=False)


class Webhook(Protocol):
    """The part of discord.py's Webhook that an interaction's reply uses."""

    async def edit_message(
        self, message_id: int, *, content: str, allowed_mentions: discord.AllowedMentions, **view: Any
    ) -> discord.abc.Snowflake: ...

    async def send(
        self, content: str, *, allowed_mentions: discord.AllowedMentions, wait: bool
    ) -> discord.abc.Snowflake: ...


class MessageSurface:
    """A reply in channel messages: the first answers a message (when there is one), the rest follow.

    Built with `sent`, it takes over messages a reply already occupies (after a restart): its next
    render rewrites each of them, and its final render deletes those the text no longer needs."""

    def __init__(
        self,
        channel: discord.PartialMessageable,
        *,
        reply_to: discord.MessageReference | None = None,
        sent: Sequence[int] = (),
    ) -> None:
        self.budget = channel_budget(channel.id)
        self._channel = channel
        self._reply_to = reply_to
        self._sent: list[int] = list(sent)
        self._shown: list[str | None] = [None] * len(self._sent)  # None: not known, rewrite it
        self._typing: asyncio.Task[None] | None = None
        self._controls = ShownControls()

    def show_controls(self, controls: ReplyControls) -> None:
        self._controls.offered = controls

    @property
    def refs(self) -> dict[str, Any] | None:
        if not self._sent:
            return None
        return {"channel": str(self._channel.id), "messages": [str(sent) for sent in self._sent]}

    async def start(self) -> None:
        self._typing = asyncio.create_task(self._keep_typing())

    async def _keep_typing(self) -> None:
        """Keep "is typing" up until the first text: a model can take longer than one indicator lasts."""
        try:
            while True:
                await self._channel.typing()
                await asyncio.sleep(TYPING_REFRESH)
        except Exception as error:  # the reply still comes; only the indicator stops
            log.warning("could not show that a reply is coming: %s", error)

    def final_cost(self, text: str) -> tuple[RateLimit, ...]:
        """The requests the final render of `text` makes (each message written, sent or deleted), so
        that the pacer waits for that many of the channel's slots rather than one."""
        pieces = split_reply(text)
        controls = bool(self._controls.change(True))
        writes = sum(
            1
            for index, piece in enumerate(pieces)
            if index >= len(self._sent) or self._shown[index] != piece or (index == 0 and controls)
        )
        channel = self.budget.cost(final=True)
        return channel * (writes + max(0, len(self._sent) - len(pieces)))

    async def render(self, text: str, *, final: bool) -> int:
        if self._typing is not None:
            self._typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._typing
            self._typing = None
        requests = 0
        pieces = split_reply(text)
        for index, piece in enumerate(pieces):
            view = self._controls.change(final) if index == 0 else {}  # the first message carries them
            if index < len(self._sent):
                if self._shown[index] != piece or view:
                    message = self._channel.get_partial_message(self._sent[index])
                    await message.edit(content=piece or "…", allowed_mentions=NO_PINGS, **view)
                    self._shown[index] = piece
                    self._controls.shown(final, view)
                    requests += 1
                continue
            extra: dict[str, Any] = dict(view)
            if index == 0 and self._reply_to is not None:
                extra |= {"reference": self._reply_to, "mention_author": False}
            message = await self._channel.send(piece or "…", allowed_mentions=NO_PINGS, **extra)
            self._sent.append(message.id)
            self._shown.append(piece)
            self._controls.shown(final, view)
            requests += 1
        if final:
            while len(self._sent) > len(pieces):  # a reopened reply whose text now needs fewer messages
                await self._channel.get_partial_message(self._sent[-1]).delete()
                self._sent.pop()
                self._shown.pop()
                requests += 1
        return requests


class ShownControls:
    """Which of a reply's controls its first message shows: Stop while it is written, Regenerate after."""

    def __init__(self) -> None:
        self.offered: ReplyControls | None = None
        self._ended: bool | None = None  # None: none shown yet (or not known, after a restart)

    def change(self, final: bool) -> dict[str, Controls]:
        """The `view` argument the next write of the first message needs; empty when nothing changes."""
        if self.offered is None or self._ended == final:
            return {}
        return {"view": Controls(self.offered, ended=final)}

    def shown(self, final: bool, view: dict[str, Controls]) -> None:
        if view:
            self._ended = final


class InteractionSurface:
    """Answers a slash command: the deferred response is edited, then follow-ups carry the overflow.

    Discord accepts the interaction's token for 15 minutes. Shortly before it runs out (a reply that waited
    its turn, or a long one) the reply moves to channel messages: the response is cut back to its last
    full line, or says the answer follows, and the rest continues in a message replying to it. The
    surface exists from the deferral on, so that move happens even while the reply waits its turn."""

    def __init__(
        self,
        webhook: Webhook,
        channel: discord.PartialMessageable,
        *,
        expires_at: float,
        original: int | None = None,
    ) -> None:
        self.budget = interaction_budget()
        self._webhook = webhook
        self._channel = channel
        self._original = original  # the response's message id, once known
        self._edited = False  # whether the response shows anything of this reply yet
        self._followups: list[int] = []
        self._shown: list[str] = []
        self._text = ""  # the reply as far as the interaction's messages show it
        self._continuation: MessageSurface | None = None
        self._offset = 0  # where in the reply the channel messages take over
        self._lock = asyncio.Lock()
        self._finished = False
        self._controls = ShownControls()
        moving_in = max(0.0, expires_at - TOKEN_MARGIN - time.time())
        self._expiry = asyncio.create_task(self._move_before_expiry(moving_in))

    @property
    def refs(self) -> dict[str, Any] | None:
        ids = ([self._original] if self._edited and self._original is not None else []) + self._followups
        continued = self._continuation.refs if self._continuation is not None else None
        ids += [int(sent) for sent in (continued or {}).get("messages", [])]
        if not ids:
            return None
        return {"channel": str(self._channel.id), "messages": [str(sent) for sent in ids]}

    def show_controls(self, controls: ReplyControls) -> None:
        self._controls.offered = controls

    def cancel(self) -> None:
        """Give the reply up before it rendered (Parley stops): no move before the token expires."""
        self._expiry.cancel()

    async def start(self) -> None:
        if self._continuation is not None:  # it waited its turn past the token's life
            await self._continuation.start()

    async def render(self, text: str, *, final: bool) -> int:
        async with self._lock:
            if final:
                self._finished = True
                self._expiry.cancel()
            if self._continuation is None:
                try:
                    return await self._render_interaction(text)
                except discord.HTTPException as error:
                    if not _token_refused(error):
                        raise
                    log.warning(
                        "Discord refused an interaction token early; the reply goes on in the channel"
                    )
                    self._continue_in_channel(len(self._text))
            assert self._continuation is not None
            return await self._continuation.render(
                reopening(text[: self._offset]) + text[self._offset :], final=final
            )

    async def _move_before_expiry(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        async with self._lock:
            if self._finished or self._continuation is not None:
                return
            text = self._text
            cut = _last_break(text, len(self._shown))
            try:
                if not text:
                    await self._edit_original(WAITING_NOTE)
                elif cut < len(text):
                    await self._render_interaction(text[:cut])
            except discord.HTTPException:
                log.warning(
                    "could not close the interaction's response before its token expired", exc_info=True
                )
                cut = len(self._text)
            self._continue_in_channel(cut)

    def _continue_in_channel(self, offset: int) -> None:
        self._offset = offset
        self._continuation = MessageSurface(
            self._channel, reply_to=reference(self._channel.id, self._original)
        )
        if self._controls.offered is not None:
            self._continuation.show_controls(self._controls.offered)
        self.budget = self._continuation.budget

    async def _render_interaction(self, text: str) -> int:
        requests = 0
        pieces = split_reply(text)
        final = self._finished
        for index, piece in enumerate(pieces):
            view = self._controls.change(final) if index == 0 else {}
            if index < len(self._shown) and self._shown[index] == piece and not view:
                continue
            if index == 0:
                await self._edit_original(piece or "…", **view)
                self._controls.shown(final, view)
            elif index - 1 < len(self._followups):
                await self._webhook.edit_message(
                    self._followups[index - 1], content=piece, allowed_mentions=NO_PINGS
                )
            else:
                sent = await self._webhook.send(piece, allowed_mentions=NO_PINGS, wait=True)
                self._followups.append(sent.id)
            if index < len(self._shown):
                self._shown[index] = piece
            else:
                self._shown.append(piece)
            requests += 1
        self._text = text
        return requests

    async def _edit_original(self, content: str, **view: Controls) -> None:
        message = await self._webhook.edit_message(
            ORIGINAL, content=content, allowed_mentions=NO_PINGS, **view
        )
        self._original = message.id
        self._edited = True


def _last_break(text: str, pieces: int) -> int:
    """Where to cut `text` so its last message ends at a line (or word), without losing a whole message."""
    for mark in ("\n", " "):
        cut = text.rfind(mark) + 1
        if cut and len(split_reply(text[:cut])) == pieces:
            return cut
    return len(text)


def _token_refused(error: discord.HTTPException) -> bool:
    """Discord's answer to an interaction token that expired (401, 50027) or was invalidated (10015)."""
    return error.status == 401 or error.code in (50027, 10015)
