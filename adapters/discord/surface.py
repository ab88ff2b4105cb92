"""A reply in Discord: typing until the first token, then one message edited, continued past 2,000 chars."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord

from adapters.discord.text import split_reply
from bot.models import RenderBudget

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
TYPING_REFRESH = 8.0  # Discord shows "is typing" for 10 s after each trigger


def channel_budget(channel_id: int) -> RenderBudget:
    # About 5 requests per 5 s per channel, sends and edits together; at least 1 s between edits of one reply.
    return RenderBudget(min_interval=1.0, bucket=f"discord:{channel_id}", capacity=5, window=5.0)


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
    """Answers a slash command: the deferred response is edited, then follow-ups carry the overflow."""

    def __init__(self, interaction: discord.Interaction, channel_id: int) -> None:
        self.budget = channel_budget(channel_id)
        self._interaction = interaction
        self._followups: list[discord.WebhookMessage] = []
        self._shown: list[str] = []

    async def start(self) -> None:
        return None  # the deferred response already shows "thinking"

    async def render(self, text: str, *, final: bool) -> int:
        requests = 0
        for index, piece in enumerate(split_reply(text)):
            if index < len(self._shown) and self._shown[index] == piece:
                continue
            if index == 0:
                await self._interaction.edit_original_response(
                    content=piece or "…", allowed_mentions=NO_PINGS
                )
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
        return requests
