"""Discord as the engine's platform port: connect, open and reopen replies, read channels and threads."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import discord

import adapters.discord.surface as surfaces
from adapters.discord import votes
from adapters.discord.client import ParleyDiscord
from adapters.discord.login import connection_refused, login, point_at
from adapters.discord.surface import InteractionSurface, MessageSurface, reference
from bot.config import Settings, SetupError
from bot.controls import REOPEN
from bot.engine import Engine
from bot.models import ConversationKey, HistoryEntry, Surface
from bot.platform import HistoryUnavailable

log = logging.getLogger(__name__)

START_SECONDS = 60.0  # how long the gateway may take to let Parley in
ARRIVING_SECONDS = 10.0  # how long a stop waits for messages still being stored (their files downloading)


class DiscordPlatform:
    name = "discord"

    def __init__(
        self, engine: Engine, settings: Settings, *, sync_on_start: bool = True, guild_ready: float = 2.0
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.client = ParleyDiscord(self, sync_on_start=sync_on_start, guild_ready=guild_ready)
        self._connection: asyncio.Task[None] | None = None
        self._stopping = False
        # /ask replies deferred but not yet begun, by token: each moves to the channel before its token
        # expires even while it waits its turn.
        self._waiting: dict[str, InteractionSurface] = {}
        self._channels: dict[int, discord.abc.Messageable] = {}  # channels fetched (not in the cache)

    # Connecting

    async def start(self) -> None:
        """Log in and connect; returns once Discord has said READY."""
        point_at(self.settings)
        try:
            await login(self.client, self.settings)
        except SetupError:
            await self.client.close()
            raise
        self._connection = asyncio.create_task(self.client.connect(), name="Discord gateway")
        ready = asyncio.ensure_future(self.client.wait_until_ready())
        try:
            await asyncio.wait(
                {self._connection, ready}, timeout=START_SECONDS, return_when="FIRST_COMPLETED"
            )
        finally:
            ready.cancel()
        if self.client.is_ready() and not self._connection.done():
            return
        if self._connection.done() and not self._connection.cancelled():
            refused = connection_refused(
                self._connection.exception(), self.client.application_id, self.settings.discord_gateway_url
            )
        else:
            refused = SetupError(
                f"Discord's gateway at {self.settings.discord_gateway_url} did not let Parley in within "
                f"{START_SECONDS:g} seconds; check the network connection, "
                "or DISCORD_GATEWAY_URL if you set it"
            )
        await self.stop()
        raise refused

    async def stop(self) -> None:
        self._stopping = True
        for waiting in self._waiting.values():
            waiting.cancel()
        self._waiting.clear()
        await self._stored_arrivals()  # while their files can still be downloaded
        await self.client.close()
        if self._connection is not None:
            await asyncio.gather(self._connection, return_exceptions=True)
        await self._stored_arrivals()

    async def _stored_arrivals(self) -> None:
        """Let messages that arrived before the gateway closed reach the inbox."""
        if self.client.arriving:
            await asyncio.wait(set(self.client.arriving), timeout=ARRIVING_SECONDS)

    async def wait_closed(self) -> None:
        assert self._connection is not None, "start() first"
        await asyncio.wait({self._connection})
        if self._stopping:
            return
        error = None if self._connection.cancelled() else self._connection.exception()
        if isinstance(error, discord.ConnectionClosed):
            reason = f"the gateway closed the connection with code {error.code}"
        else:
            reason = (str(error) or type(error).__name__) if error else "the gateway connection ended"
        log.error("Discord stopped: %s; Parley can no longer receive messages there", reason)

    # Replies

    async def surface_for(
        self, conversation: ConversationKey, reply_to: Mapping[str, Any] | None = None
    ) -> Surface:
        if reply_to is None:  # nothing to answer: a message of its own in the conversation
            return MessageSurface(self._partial(int(conversation.thread_id or conversation.channel_id)))
        if REOPEN in reply_to:  # an edited question: its answer is rewritten where it shows
            return await self.reopen(conversation, reply_to[REOPEN])
        if "interaction" in reply_to:
            waiting = self._waiting.pop(str(reply_to["interaction"]["token"]), None)
            return waiting or self._interaction_surface(reply_to)
        channel = self._partial(int(reply_to["channel"]))
        answered = reply_to.get("message")
        return MessageSurface(channel, reply_to=reference(channel.id, int(answered) if answered else None))

    async def reopen(self, conversation: ConversationKey, refs: Mapping[str, Any]) -> Surface:
        # Interaction responses are public messages of the bot's: the channel's endpoints edit them too,
        # long after the interaction's token has expired.
        channel = self._partial(int(refs["channel"]))
        return MessageSurface(channel, sent=[int(message) for message in refs["messages"]])

    def deferred(self, interaction: discord.Interaction, original: int | None) -> dict[str, Any]:
        """What answering a deferred command needs (stored with it), and its surface from now on."""
        reply_to = {
            "channel": str(interaction.channel_id),
            "interaction": {
                "application_id": str(interaction.application_id),
                "token": interaction.token,
                "expires_at": time.time() + surfaces.TOKEN_SECONDS,
                "original": str(original) if original is not None else None,
            },
        }
        self._waiting[interaction.token] = self._interaction_surface(reply_to)
        return reply_to

    async def ballot(self, conversation: ConversationKey, comparison: int, text: str) -> None:
        """A comparison's vote buttons, in a message of their own (adapters/discord/votes.py)."""
        await votes.post(
            self._partial(int(conversation.thread_id or conversation.channel_id)), comparison, text
        )

    def abandon(self, reply_to: Mapping[str, Any]) -> None:
        """A deferred command the engine will not answer through this surface."""
        waiting = self._waiting.pop(str(reply_to["interaction"]["token"]), None)
        if waiting is not None:
            waiting.cancel()

    def _interaction_surface(self, reply_to: Mapping[str, Any]) -> InteractionSurface:
        token = reply_to["interaction"]
        webhook = discord.Webhook.partial(
            int(token["application_id"]), str(token["token"]), client=self.client
        )
        original = token.get("original")
        return InteractionSurface(
            webhook,
            self._partial(int(reply_to["channel"])),
            expires_at=float(token["expires_at"]),
            original=int(original) if original else None,
        )

    def _partial(self, channel_id: int) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(channel_id)

    # Reading

    async def history(
        self,
        conversation: ConversationKey,
        *,
        limit: int,
        before: str | None = None,
        after: str | None = None,
    ) -> list[HistoryEntry]:
        asked: dict[str, Any] = {"limit": limit}
        if before is not None:
            asked["before"] = discord.Object(int(before))
        if after is not None:
            asked["after"] = discord.Object(int(after))
        try:
            channel = await self._channel(conversation)
            messages = [message async for message in channel.history(**asked, oldest_first=after is not None)]
        except discord.HTTPException as error:
            raise HistoryUnavailable(
                f"Discord refused the messages of {conversation} ({error.status}: {error.text})"
            ) from None
        if after is None:  # Discord reads back from the newest
            messages.reverse()
        assert self.client.user is not None
        return [_entry(message, self.client.user.id) for message in messages if _readable(message)]

    async def permalink(self, conversation: ConversationKey, message_id: str) -> str:
        channel = await self._channel(conversation)
        return channel.get_partial_message(int(message_id)).jump_url  # type: ignore[attr-defined]

    # Posting elsewhere (a schedule's --to)

    async def resolve_channel(self, near: ConversationKey, typed: str) -> ConversationKey | None:
        """`<#ID>` (how Discord writes a channel mention) or `#name`, a text channel or thread of the
        server `near` is in."""
        here = self.client.get_channel(int(near.thread_id or near.channel_id))
        guild = getattr(here, "guild", None)
        if guild is None:  # a DM: no other channels
            return None
        mention = re.fullmatch(r"<#(\d+)>", typed.strip())
        if mention:
            found = guild.get_channel_or_thread(int(mention[1]))
        else:
            name = typed.strip().removeprefix("#").lower()
            found = next((c for c in guild.text_channels if c.name.lower() == name), None)
        if isinstance(found, discord.Thread) and found.parent_id is not None:
            return ConversationKey(self.name, str(found.parent_id), str(found.id))
        if isinstance(found, discord.TextChannel):
            return ConversationKey(self.name, str(found.id))
        return None

    async def may_post(self, conversation: ConversationKey) -> bool:
        channel = self.client.get_channel(int(conversation.thread_id or conversation.channel_id))
        guild = getattr(channel, "guild", None)
        if channel is None or guild is None or not hasattr(channel, "permissions_for"):
            return False
        allowed = channel.permissions_for(guild.me)
        if isinstance(channel, discord.Thread):
            return allowed.view_channel and allowed.send_messages_in_threads
        return allowed.view_channel and allowed.send_messages

    async def _channel(self, conversation: ConversationKey) -> discord.abc.Messageable:
        """The channel or thread, from the client's cache or (a DM after a restart) from Discord."""
        channel_id = int(conversation.thread_id or conversation.channel_id)
        channel = self.client.get_channel(channel_id) or self._channels.get(channel_id)
        if channel is None:
            channel = self._channels[channel_id] = await self.client.fetch_channel(channel_id)
        assert isinstance(channel, discord.abc.Messageable)
        return channel


def _readable(message: discord.Message) -> bool:
    """A message people wrote or Parley answered, with something in it: not a join, a pin or a placeholder."""
    return not message.is_system() and bool(message.content or message.attachments)


def _entry(message: discord.Message, parley_id: int) -> HistoryEntry:
    text = message.clean_content
    if message.attachments:
        files = ", ".join(attachment.filename for attachment in message.attachments)
        text = f"{text} [attached: {files}]".strip()
    return HistoryEntry(
        id=str(message.id),
        author_id=str(message.author.id),
        author_name=message.author.display_name,
        text=text,
        created_at=message.created_at.timestamp(),
        by_parley=message.author.id == parley_id,
        permalink=message.jump_url,
    )
