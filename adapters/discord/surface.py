"""A reply in Discord: typing until the first token, then one message edited, continued past 2,000 chars."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord

from adapters.discord.text import reopening, split_reply
from bot.models import RenderBudget

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
TYPING_REFRESH = 8.0  # Discord shows "is typing" for 10 s after each trigger
TOKEN_SECONDS = 15 * 60.0  # how long Discord accepts an interaction's token for edits and follow-ups
TOKEN_MARGIN = 60.0  # move to channel messages this long before, while the token can still edit
WAITING_NOTE = "_The answer will follow in a new message in this channel._"


def channel_budget(channel_id: int) -> RenderBudget:
    # About 5 requests per 5 s per channel, sends and edits together; at least 1 s between edits of one reply.
    return RenderBudget(min_interval=1.0, bucket=f"discord:{channel_id}", capacity=5, window=5.0)


def interaction_budget() -> RenderBudget:
    # Discord limits interaction webhooks per token, and a token carries one reply: an edit a second.
    return RenderBudget(min_interval=1.0)


class MessageSurface:
    """Answers a message with a reply to it, then follow-up messages as the text grows."""

    def __init__(
        self, channel: discord.abc.Messageable, channel_id: int, reply_to: discord.Message | None
    ) -> None:
        self.budget = channel_budget(channel_id)
        self._channel = channel
        self._reply_to = reply_to
        self._sent: list[discord.Message] = []
        self._shown: list[str] = []
        self._typing: asyncio.Task[None] | None = None

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

    async def render(self, text: str, *, final: bool) -> int:
        if self._typing is not None:
            self._typing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._typing
            self._typing = None
        requests = 0
        for index, piece in enumerate(split_reply(text)):
            if index < len(self._sent):
                if self._shown[index] != piece:
                    await self._sent[index].edit(content=piece, allowed_mentions=NO_PINGS)
                    self._shown[index] = piece
                    requests += 1
                continue
            extra = {}
            if index == 0 and self._reply_to is not None:
                # A reply to a message deleted meanwhile is still sent, without the reference.
                reference = self._reply_to.to_reference(fail_if_not_exists=False)
                extra = {"reference": reference, "mention_author": False}
            message = await self._channel.send(piece or "…", allowed_mentions=NO_PINGS, **extra)
            self._sent.append(message)
            self._shown.append(piece)
            requests += 1
        return requests


class InteractionSurface:
    """Answers a slash command: the deferred response is edited, then follow-ups carry the overflow.

    Discord accepts the interaction's token for 15 minutes. Shortly before it runs out (a reply that waited
    its turn, or a long one) the reply moves to channel messages: the response is cut back to its last
    full line, or says the answer follows, and the rest continues in a message replying to it."""

    def __init__(self, interaction: discord.Interaction, channel_id: int) -> None:
        self.budget = interaction_budget()
        self._interaction = interaction
        self._channel_id = channel_id
        self._original: discord.InteractionMessage | None = None
        self._followups: list[discord.WebhookMessage] = []
        self._shown: list[str] = []
        self._text = ""  # the reply as far as the interaction's messages show it
        self._continuation: MessageSurface | None = None
        self._offset = 0  # where in the reply the channel messages take over
        self._lock = asyncio.Lock()
        self._finished = False
        self._expiry = asyncio.create_task(self._move_before_expiry(TOKEN_SECONDS - TOKEN_MARGIN))

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
        interaction = self._interaction
        channel = interaction.channel or interaction.client.get_partial_messageable(self._channel_id)
        assert isinstance(channel, discord.abc.Messageable)
        self._offset = offset
        self._continuation = MessageSurface(channel, self._channel_id, self._original)
        self.budget = self._continuation.budget

    async def _render_interaction(self, text: str) -> int:
        requests = 0
        pieces = split_reply(text)
        for index, piece in enumerate(pieces):
            if index < len(self._shown) and self._shown[index] == piece:
                continue
            if index == 0:
                await self._edit_original(piece or "…")
            elif index - 1 < len(self._followups):
                await self._followups[index - 1].edit(content=piece, allowed_mentions=NO_PINGS)
            else:
                sent = await self._interaction.followup.send(piece, allowed_mentions=NO_PINGS, wait=True)
                self._followups.append(sent)
            if index < len(self._shown):
                self._shown[index] = piece
            else:
                self._shown.append(piece)
            requests += 1
        self._text = text
        return requests

    async def _edit_original(self, content: str) -> None:
        self._original = await self._interaction.edit_original_response(
            content=content, allowed_mentions=NO_PINGS
        )


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
