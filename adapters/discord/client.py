"""The Discord client: what arrives (messages, slash commands) becomes facts and Messages for the engine."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import TYPE_CHECKING

import aiohttp
import discord
from discord import app_commands

from adapters.discord import votes
from adapters.discord.commands import install
from adapters.discord.controls import on_component
from adapters.discord.facts import author_of, conversation_key, server_of
from adapters.discord.modals import on_submit
from adapters.discord.surface import NO_PINGS
from bot.addressing import Arrival, Rules
from bot.metrics import Metrics
from bot.models import Attachment, ConversationKey, Message

if TYPE_CHECKING:
    from adapters.discord.port import DiscordPlatform

log = logging.getLogger(__name__)

ATTACHMENT_BYTES = 8 * 1024 * 1024
COMMANDS_HASH = "discord:commands-hash"
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    read_message_history=True,
    embed_links=True,
    attach_files=True,
)
NOT_STORED = (
    "Parley could not take this message just now (its memory is unavailable); please try again shortly."
)


class ParleyDiscord(discord.Client):
    def __init__(
        self, platform: DiscordPlatform, *, guild_ready: float = 2.0, shard: tuple[int, int] | None = None
    ) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        # `guild_ready`: how long READY waits for one more server to arrive (each arrives on its own).
        # `shard`: (shard id, shard count) when the bot is sharded; this client then gets that shard's
        # servers' events (and, on shard 0, direct messages).
        super().__init__(
            intents=intents,
            allowed_mentions=NO_PINGS,
            guild_ready_timeout=guild_ready,
            http_trace=_rate_limits_counted(platform.engine.metrics),
            **({"shard_id": shard[0], "shard_count": shard[1]} if shard else {}),
        )
        self.platform = platform
        self.engine = platform.engine
        self.tree = app_commands.CommandTree(self)
        # By channel and person: the newest message still on its way to the engine.
        self._arrivals: dict[tuple[int, int], asyncio.Future[None]] = {}
        self.arriving: set[asyncio.Task[None]] = set()  # messages on their way to the engine
        install(self.tree, platform)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """A shard starts a session only in its bucket's slot, shared with the other instances."""
        slots = self.platform.identify_slots
        if slots is None or shard_id is None:
            await super().before_identify_hook(shard_id, initial=initial)
            return
        await slots.wait(shard_id)

    async def sync_commands(self) -> None:
        """Register the slash commands when they changed since the last sync (the leader does this)."""
        payload = json.dumps(
            [command.to_dict(self.tree) for command in self.tree.get_commands()], sort_keys=True
        )
        digest = hashlib.sha256(payload.encode()).hexdigest()
        if await self.engine.store.get_meta(COMMANDS_HASH) == digest:
            return
        try:
            await self.tree.sync()
        except discord.HTTPException as error:  # the bot still answers mentions; the next lead retries
            log.error(
                "Discord refused the slash commands (%s: %s); they were not updated", error.status, error.text
            )
            return
        await self.engine.store.set_meta(COMMANDS_HASH, digest)
        log.info("slash commands changed; synced them globally")

    async def on_ready(self) -> None:
        assert self.user is not None and self.application_id is not None
        url = discord.utils.oauth_url(
            self.application_id, permissions=PERMISSIONS, scopes=("bot", "applications.commands")
        )
        log.info("Discord: logged in as %s. Invite: %s", self.user, url)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        # Slash commands go to the tree; clicks on a reply's components come here, by their custom ids.
        if interaction.type == discord.InteractionType.component:
            await on_component(self.platform, interaction)
            await votes.on_component(self.platform, interaction)
        elif interaction.type == discord.InteractionType.modal_submit:  # a /prompt form's answers
            await on_submit(self.platform, interaction)

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        """An edited question: answered again in place when it is recent (bot/controls.py decides)."""
        message = payload.message
        if message.author.bot or "content" not in payload.data:  # an embed resolved, not an edit
            return
        edited = message.edited_at.isoformat() if message.edited_at else ""
        incoming = Message(
            key=conversation_key(message.channel),
            author=author_of(message.author, message.channel),
            text=self._readable(message),
            id=str(message.id),
        )
        try:
            await self.engine.controls.edited(incoming, edited)
        except Exception:
            log.exception("could not take the edit of message %s", message.id)

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        """A deleted question leaves memory."""
        channel = self.get_channel(payload.channel_id)
        key = conversation_key(channel) if channel else ConversationKey("discord", str(payload.channel_id))
        try:
            await self.engine.controls.deleted(key, str(payload.message_id))
        except Exception:
            log.exception("could not forget deleted message %s", payload.message_id)

    async def on_message(self, message: discord.Message) -> None:
        # discord.py hands each event to a task of its own, and what comes before accepting a message
        # (reading settings, downloading files) takes longer for some than for others; a person's
        # messages in a channel are still stored, and so answered, in the order they were sent.
        sender = (message.channel.id, message.author.id)
        previous = self._arrivals.get(sender)
        mine = self._arrivals[sender] = asyncio.get_running_loop().create_future()
        task = asyncio.current_task()
        assert task is not None
        self.arriving.add(task)
        try:
            await self._take(message, previous)
        finally:
            mine.set_result(None)
            if self._arrivals.get(sender) is mine:
                del self._arrivals[sender]
            self.arriving.discard(task)

    async def _take(self, message: discord.Message, previous: asyncio.Future[None] | None) -> None:
        assert self.user is not None
        key = conversation_key(message.channel)
        reference = message.reference.resolved if message.reference else None
        arrival = Arrival(
            key,
            from_bot=message.author.bot,
            ordinary=message.type in (discord.MessageType.default, discord.MessageType.reply),
            direct=isinstance(message.channel, discord.DMChannel),
            mentions_parley=self.user in message.mentions,
            replies_to_parley=isinstance(reference, discord.Message) and reference.author == self.user,
        )
        rules = Rules(reply_in_dms=self.platform.settings.discord_reply_in_dms)
        reason = await self.engine.addressing.reason(arrival, rules)
        if reason is None:
            return
        author, server = author_of(message.author, message.channel), server_of(message.channel)
        if refusal := self.engine.access.refusal(key, author, server):
            self.engine.metrics.refused.labels("access").inc()
            if self.engine.access.tells(reason, private=arrival.direct):  # a DM is private
                await self._refuse(message, refusal)
            return
        incoming = Message(
            key=key,
            author=author,
            text=self._readable(message),
            id=str(message.id),
            attachments=tuple([await _download(attachment) for attachment in message.attachments]),
            is_direct=arrival.direct,
            server_id=server,
        )
        reply_to = {"channel": str(message.channel.id), "message": str(message.id)}
        if previous is not None:
            await previous
        try:
            await self.engine.accept(incoming, reply_to)
        except Exception:
            log.exception("could not store message %s; telling its author", message.id)
            await message.channel.send(
                NOT_STORED,
                reference=message.to_reference(fail_if_not_exists=False),
                allowed_mentions=NO_PINGS,
            )

    async def _refuse(self, message: discord.Message, refusal: str) -> None:
        try:
            await message.channel.send(
                refusal, reference=message.to_reference(fail_if_not_exists=False), allowed_mentions=NO_PINGS
            )
        except discord.HTTPException as error:
            log.warning("could not tell %s they may not use Parley (%s)", message.author.id, error.status)

    def _readable(self, message: discord.Message) -> str:
        """The text as people read it, without Parley's own mention."""
        text = message.clean_content
        if self.user is not None:
            for name in {self.user.display_name, self.user.name}:
                text = text.replace(f"@{name}", "")
        return " ".join(text.split(" ")).strip()


def _rate_limits_counted(metrics: Metrics) -> aiohttp.TraceConfig:
    """Every 429 Discord answers, for the metrics (discord.py waits and retries on its own)."""
    trace = aiohttp.TraceConfig()

    async def on_request_end(session: object, context: object, params: aiohttp.TraceRequestEndParams) -> None:
        if params.response.status == 429:
            metrics.platform_429s.labels("discord").inc()

    trace.on_request_end.append(on_request_end)
    return trace


async def _download(attachment: discord.Attachment) -> Attachment:
    if attachment.size > ATTACHMENT_BYTES:
        reason = f"it is over {ATTACHMENT_BYTES // (1024 * 1024)} MB"
        return Attachment(
            attachment.filename, attachment.content_type, attachment.size, unavailable_reason=reason
        )
    try:
        data = await attachment.read()
    except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError):  # the message is kept
        return Attachment(
            attachment.filename,
            attachment.content_type,
            attachment.size,
            unavailable_reason="the download failed",
        )
    return Attachment(attachment.filename, attachment.content_type, attachment.size, data=data)
