"""Discord as the engine's platform port: connect, open and reopen replies, read channels and threads."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import discord

import adapters.discord.surface as surfaces
from adapters.discord import votes
from adapters.discord.client import ParleyDiscord
from adapters.discord.login import connection_refused, login, point_at, unreachable
from adapters.discord.surface import InteractionSurface, MessageSurface, reference
from bot.config import Settings, SetupError
from bot.controls import REOPEN
from bot.engine import Engine
from bot.models import ConversationKey, HistoryEntry, Surface
from bot.platform import HistoryUnavailable
from bot.shards import IdentifySlots, Leases

log = logging.getLogger(__name__)

START_SECONDS = 60.0  # how long the gateway may take to let Parley in
ARRIVING_SECONDS = 10.0  # how long a stop waits for messages still being stored (their files downloading)


class DiscordPlatform:
    """With DISCORD_SHARD_COUNT above 1, the gateway is split into shards: this instance runs one client
    per shard whose lease it holds (bot/shards.py), all feeding the one engine, and takes the shards of
    instances that die. One discord.py client per shard, not an AutoShardedClient: that fixes its
    shard ids when it is made and cannot take or give up a shard while it runs, and paces IDENTIFYs in
    its own process only. Replies, recovery and command sync go through one more client that logs in
    but never connects (`client`), so a reply outlives the shard that took its question, and Discord's
    REST rate limits are counted in one place. With one shard, `client` is also the gateway client."""

    name = "discord"

    def __init__(self, engine: Engine, settings: Settings, *, guild_ready: float = 2.0) -> None:
        self.engine = engine
        self.settings = settings
        self.count = settings.discord_shard_count
        self.client = ParleyDiscord(self, guild_ready=guild_ready)
        self._guild_ready = guild_ready
        self.shards: dict[int, ParleyDiscord] = {}  # by shard id, the clients connected (or connecting)
        self._connections: dict[int, asyncio.Task[None]] = {}
        self.identify_slots: IdentifySlots | None = None  # sharded: when a shard may IDENTIFY
        self._leases: Leases | None = None
        self._watching: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None  # when it ends, Discord has stopped for Parley
        self._stopping = False
        # /ask replies deferred but not yet begun, by token: each moves to the channel before its token
        # expires even while it waits its turn.
        self._waiting: dict[str, InteractionSurface] = {}
        self._channels: dict[int, discord.abc.Messageable] = {}  # channels fetched (not in the cache)

    # Connecting

    async def start(self) -> None:
        """Log in and connect; returns once Discord has said READY (sharded: on every shard this instance
        won at start; it may win none, and takes shards later as they free)."""
        point_at(self.settings)
        try:
            await login(self.client, self.settings)
            self.engine.catalog.refresh()  # so /model's autocomplete finds the model lists warm
            if self.count == 1:
                self.shards[0] = self.client
                await self._connect(0, self.client)
                self._ending = self._connections[0]
                return
            self.identify_slots = IdentifySlots(self.engine.store, self.name, await self._max_concurrency())
            self._leases = Leases(self.engine.store, self.name, self.count)
            opening = [asyncio.ensure_future(self._open(shard)) for shard in await self._leases.take_free()]
            try:
                await asyncio.gather(*opening)
            finally:  # one refused: the others stop before everything closes
                for task in opening:
                    task.cancel()
                await asyncio.gather(*opening, return_exceptions=True)
        except BaseException:
            await self.stop()
            raise
        self._watching = self._ending = asyncio.create_task(self._watch(), name="Discord shards")

    async def lead(self) -> None:
        """The leader registers the slash commands (once for all instances), when they changed."""
        await self.client.sync_commands()

    async def step_down(self) -> None:
        """Nothing to stop: a sync is done once the lead is taken."""

    async def _max_concurrency(self) -> int:
        """How many shards may IDENTIFY at once (one per bucket), as GET /gateway/bot says."""
        try:
            _shards, _url, limits = await self.client.http.get_bot_gateway()
        except discord.GatewayNotFound:
            raise SetupError(
                "Discord did not answer GET /gateway/bot, which says how many shards may connect at once; "
                "try again shortly"
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise SetupError(unreachable(self.settings.discord_api_base, error)) from None
        return int(limits.get("max_concurrency", 1))

    async def _open(self, shard: int) -> None:
        """Connect a shard whose lease this instance holds; SetupError when Discord refuses it."""
        client = self.shards[shard] = ParleyDiscord(
            self, guild_ready=self._guild_ready, shard=(shard, self.count)
        )
        try:
            await login(client, self.settings)
            await self._connect(shard, client)
        except BaseException:
            await self._close(shard)
            raise
        log.info("Discord: shard %d of %d connected", shard, self.count)

    async def _connect(self, shard: int, client: ParleyDiscord) -> None:
        connection = self._connections[shard] = asyncio.create_task(
            client.connect(), name=f"Discord gateway, shard {shard}"
        )
        ready = asyncio.ensure_future(client.wait_until_ready())
        try:
            await asyncio.wait({connection, ready}, timeout=START_SECONDS, return_when="FIRST_COMPLETED")
        finally:
            ready.cancel()
        if client.is_ready() and not connection.done():
            return
        if connection.done() and not connection.cancelled():
            error = connection.exception()
            gateway = self.settings.discord_gateway_url
            raise connection_refused(error, client.application_id, gateway) from error
        raise SetupError(
            f"Discord's gateway at {self.settings.discord_gateway_url} did not let Parley in within "
            f"{START_SECONDS:g} seconds; check the network connection, or DISCORD_GATEWAY_URL if you set it"
        )

    async def _close(self, shard: int) -> None:
        client = self.shards.pop(shard, None)
        connection = self._connections.pop(shard, None)
        if client is not None:
            await client.close()
        if connection is not None:
            await asyncio.gather(connection, return_exceptions=True)

    async def _watch(self) -> None:
        """Every heartbeat: give up the shards whose lease went or whose connection ended, and connect
        the shards nobody holds. Ends (and Parley with it) when Discord refuses a shard for a reason an
        operator must fix: the token, the intents, the shard count."""
        assert self._leases is not None
        while True:
            for shard in await self._leases.lost():
                log.warning("Discord: lost the lease on shard %d; closing its connection", shard)
                await self._close(shard)
            for shard, connection in list(self._connections.items()):
                if not connection.done():
                    continue
                error = None if connection.cancelled() else connection.exception()
                await self._close(shard)
                await self._leases.release(shard)
                if _fatal(error):
                    gateway = self.settings.discord_gateway_url
                    raise connection_refused(error, self.client.application_id, gateway)
                log.error("Discord: shard %d's connection ended (%r); any instance may take it", shard, error)
            if (surplus := await self._leases.surplus()) is not None:
                log.info("Discord: giving shard %d up for an instance that holds fewer", surplus)
                await self._close(surplus)
                await self._leases.release(surplus)
            for shard in await self._leases.take_free():
                try:
                    await self._open(shard)
                except SetupError as refused:
                    await self._leases.release(shard)
                    if _fatal(refused.__cause__):
                        raise
                    log.error("Discord: could not connect shard %d: %s", shard, refused)
                except Exception:  # anything else: the shard is free for the next look, here or elsewhere
                    await self._leases.release(shard)
                    log.exception("Discord: could not connect shard %d", shard)
            await asyncio.sleep(self.settings.instance_heartbeat_seconds)

    async def stop(self) -> None:
        self._stopping = True
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
        for waiting in self._waiting.values():
            waiting.cancel()
        self._waiting.clear()
        clients = [self.client, *self.shards.values()]
        await self._stored_arrivals(clients)  # while their files can still be downloaded
        for shard in list(self.shards):
            await self._close(shard)
        await self.client.close()
        await self._stored_arrivals(clients)
        if self._leases is not None:
            await self._leases.close()

    @staticmethod
    async def _stored_arrivals(clients: list[ParleyDiscord]) -> None:
        """Let messages that arrived before the gateway closed reach the inbox."""
        arriving = {task for client in clients for task in client.arriving}
        if arriving:
            await asyncio.wait(arriving, timeout=ARRIVING_SECONDS)

    async def wait_closed(self) -> None:
        ending = self._ending
        assert ending is not None, "start() first"
        await asyncio.wait({ending})
        if self._stopping:
            return
        error = None if ending.cancelled() else ending.exception()
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
        here = self._cached(int(near.thread_id or near.channel_id))
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
        channel = self._cached(int(conversation.thread_id or conversation.channel_id))
        guild = getattr(channel, "guild", None)
        if channel is None or guild is None or not hasattr(channel, "permissions_for"):
            return False
        allowed = channel.permissions_for(guild.me)
        if isinstance(channel, discord.Thread):
            return allowed.view_channel and allowed.send_messages_in_threads
        return allowed.view_channel and allowed.send_messages

    def _cached(self, channel_id: int) -> Any:
        """A channel or thread from the gateway cache of the shard its server is on."""
        return next(
            (found for client in self.shards.values() if (found := client.get_channel(channel_id))), None
        )

    async def _channel(self, conversation: ConversationKey) -> discord.abc.Messageable:
        """The channel or thread, from the client's cache or (a DM after a restart) from Discord."""
        channel_id = int(conversation.thread_id or conversation.channel_id)
        channel = self._cached(channel_id) or self._channels.get(channel_id)
        if channel is None:
            channel = self._channels[channel_id] = await self.client.fetch_channel(channel_id)
        assert isinstance(channel, discord.abc.Messageable)
        return channel


def _fatal(error: BaseException | None) -> bool:
    """A refusal that connecting again cannot mend: the token, the intents, the shard or its count."""
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return True
    return isinstance(error, discord.ConnectionClosed) and error.code in (4004, 4010, 4011, 4012, 4013, 4014)


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
