"""The Discord bot: which messages it answers, its slash commands, and how they reach the engine."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import discord
from discord import app_commands

from adapters.discord.interactions import (
    AUTOCOMPLETE_WAIT,
    CHOICE_LIMIT,
    answer_command,
)
from adapters.discord.surface import NO_PINGS, InteractionSurface, MessageSurface
from bot.config import Settings
from bot.engine import Engine
from bot.models import Attachment, Author, ConversationKey, Message

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


def conversation_key(
    channel: discord.abc.Messageable | discord.abc.GuildChannel | discord.Thread,
) -> ConversationKey:
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return ConversationKey("discord", str(channel.parent_id), str(channel.id))
    return ConversationKey("discord", str(getattr(channel, "id", "dm")))


def author_of(user: discord.User | discord.Member, channel: object) -> Author:
    is_manager = False
    roles: tuple[str, ...] = ()
    if isinstance(user, discord.Member):
        roles = tuple(str(role.id) for role in user.roles)
        permissions = (
            channel.permissions_for(user) if hasattr(channel, "permissions_for") else user.guild_permissions
        )
        is_manager = permissions.manage_channels
    return Author(str(user.id), user.display_name, is_channel_manager=is_manager, role_ids=roles)


class ParleyDiscord(discord.Client):
    def __init__(self, engine: Engine, settings: Settings, *, sync_on_start: bool = True) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(intents=intents, allowed_mentions=NO_PINGS)
        self.engine = engine
        self.settings = settings
        self.tree = app_commands.CommandTree(self)
        self._replies: set[asyncio.Task[None]] = set()
        self._sync_on_start = sync_on_start
        _register_commands(self)

    async def setup_hook(self) -> None:
        if not self._sync_on_start:
            return
        self.engine.catalog.refresh()  # so /model's autocomplete finds the model lists warm
        payload = json.dumps(
            [command.to_dict(self.tree) for command in self.tree.get_commands()], sort_keys=True
        )
        digest = hashlib.sha256(payload.encode()).hexdigest()
        if await self.engine.store.get_meta(COMMANDS_HASH) != digest:
            try:
                await self.tree.sync()
            except discord.HTTPException as error:  # the bot still answers mentions; the next start retries
                log.error(
                    "Discord refused the slash commands (%s: %s); they were not updated",
                    error.status,
                    error.text,
                )
                return
            await self.engine.store.set_meta(COMMANDS_HASH, digest)
            log.info("slash commands changed; synced them globally")

    async def close(self) -> None:
        # Replies in flight get the engine's grace period to close their messages while the session is open.
        for task in self._replies:
            task.cancel()
        await asyncio.gather(*self._replies, return_exceptions=True)
        await super().close()

    async def on_ready(self) -> None:
        assert self.user is not None and self.application_id is not None
        url = discord.utils.oauth_url(
            self.application_id, permissions=PERMISSIONS, scopes=("bot", "applications.commands")
        )
        log.info("Discord: logged in as %s. Invite: %s", self.user, url)

    async def on_message(self, message: discord.Message) -> None:
        if not await self._addressed(message):
            return
        task = asyncio.create_task(self._answer(message))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _addressed(self, message: discord.Message) -> bool:
        if message.author.bot or message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return False
        if isinstance(message.channel, discord.DMChannel):
            return self.settings.discord_reply_in_dms
        assert self.user is not None
        if self.user in message.mentions:
            return True
        reference = message.reference.resolved if message.reference else None
        if isinstance(reference, discord.Message) and reference.author == self.user:
            return True
        return (await self.engine.settings_for(conversation_key(message.channel))).autoreply

    async def _answer(self, message: discord.Message) -> None:
        try:
            text = message.clean_content
            if self.user is not None:
                for name in {self.user.display_name, self.user.name}:
                    text = text.replace(f"@{name}", "")
            incoming = Message(
                key=conversation_key(message.channel),
                author=author_of(message.author, message.channel),
                text=" ".join(text.split(" ")).strip(),
                id=str(message.id),
                attachments=tuple([await _download(a) for a in message.attachments]),
                is_direct=isinstance(message.channel, discord.DMChannel),
            )
            await self.engine.handle(incoming, MessageSurface(message.channel, message.channel.id, message))
        except discord.DiscordException:
            log.exception("a Discord request failed while answering message %s", message.id)


async def _download(attachment: discord.Attachment) -> Attachment:
    if attachment.size > ATTACHMENT_BYTES:
        reason = f"it is over {ATTACHMENT_BYTES // (1024 * 1024)} MB"
        return Attachment(
            attachment.filename, attachment.content_type, attachment.size, unavailable_reason=reason
        )
    try:
        data = await attachment.read()
    except discord.HTTPException:
        return Attachment(
            attachment.filename,
            attachment.content_type,
            attachment.size,
            unavailable_reason="the download failed",
        )
    return Attachment(attachment.filename, attachment.content_type, attachment.size, data=data)


def _register_commands(bot: ParleyDiscord) -> None:
    tree = bot.tree
    engine = bot.engine

    def incoming(interaction: discord.Interaction, text: str) -> Message:
        channel = interaction.channel
        return Message(
            key=conversation_key(channel)
            if channel
            else ConversationKey("discord", str(interaction.channel_id)),
            author=author_of(interaction.user, channel),
            text=text,
            id=str(interaction.id),
        )

    async def run(interaction: discord.Interaction, line: str) -> None:
        await answer_command(interaction, engine.run_command(incoming(interaction, ""), line))

    async def stream(interaction: discord.Interaction, text: str) -> None:
        await interaction.response.defer(thinking=True)
        # discord.py runs the command in a task of its own: count it among the replies closed at shutdown.
        task = asyncio.current_task()
        assert task is not None
        bot._replies.add(task)
        try:
            surface = InteractionSurface(interaction, interaction.channel_id or 0)
            await engine.handle(incoming(interaction, text), surface)
        finally:
            bot._replies.discard(task)

    @tree.command(name="ask", description="Ask Parley something here, with this channel's memory")
    @app_commands.describe(prompt="What to ask")
    async def ask(interaction: discord.Interaction, prompt: str) -> None:
        await stream(interaction, prompt)

    @tree.command(name="web", description="Answer from fresh web results")
    @app_commands.describe(query="What to search the web for")
    async def web(interaction: discord.Interaction, query: str) -> None:
        await stream(interaction, f"/web {query}")

    @tree.command(name="model", description="Show or switch this channel's model")
    @app_commands.describe(name="PROVIDER/MODEL to switch to, or 'default'; empty shows the current one")
    async def model(interaction: discord.Interaction, name: str | None = None) -> None:
        await run(interaction, f"model {name}" if name else "model")

    @model.autocomplete("name")
    async def model_names(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        key = incoming(interaction, "").key
        choices = await engine.model_choices(key, current, limit=25, wait=AUTOCOMPLETE_WAIT)
        active = (await engine.settings_for(key)).model
        return [
            app_commands.Choice(name=f"{n} (current)"[:CHOICE_LIMIT] if n == active else n, value=n)
            for n in choices
            if len(n) <= CHOICE_LIMIT  # Discord refuses the whole answer over a longer one; type it instead
        ]

    @tree.command(name="models", description="List the models you can switch to")
    @app_commands.describe(filter="Only models whose name contains this")
    async def models(interaction: discord.Interaction, filter: str | None = None) -> None:
        await run(interaction, f"models {filter or ''}")

    @tree.command(name="system", description="Show, set or clear (with 'clear') this channel's system prompt")
    @app_commands.describe(text="The new system prompt, or 'clear'; empty shows the current one")
    async def system(interaction: discord.Interaction, text: str | None = None) -> None:
        await run(interaction, f"system {text or ''}")

    @tree.command(name="reset", description="Forget this channel's messages")
    async def reset(interaction: discord.Interaction) -> None:
        await run(interaction, "reset")

    @tree.command(name="search", description="Web search for this channel: off, on or auto")
    @app_commands.describe(mode="off, on or auto; empty shows the current mode")
    @app_commands.choices(mode=[app_commands.Choice(name=m, value=m) for m in ("off", "on", "auto")])
    async def search(interaction: discord.Interaction, mode: str | None = None) -> None:
        await run(interaction, f"search {mode or ''}")

    @tree.command(name="autoreply", description="Answer every message in this channel, not only mentions")
    @app_commands.describe(state="on or off; empty shows the current state")
    @app_commands.choices(state=[app_commands.Choice(name=s, value=s) for s in ("on", "off")])
    async def autoreply(interaction: discord.Interaction, state: str | None = None) -> None:
        await run(interaction, f"autoreply {state or ''}")

    @tree.command(name="help", description="What Parley can do")
    async def help_(interaction: discord.Interaction) -> None:
        await run(interaction, "help")
