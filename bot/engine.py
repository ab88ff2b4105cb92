"""The conversation engine: stores each message the moment it is accepted, answers it in its turn, and
after a crash finishes what the last process left undone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from bot import commands
from bot.access import Access
from bot.addressing import Addressing
from bot.attachments import read_attachments
from bot.budgets import Budgets, override_targets
from bot.catalog import ModelCatalog, ResolvedModel, UnknownModelError
from bot.checkpoints import Checkpoints
from bot.compare import Compare, asks, relabelled
from bot.config import Settings
from bot.controls import Controls, ReplyControls, offer
from bot.gate import Gate
from bot.lookups import LookUp, LookUpBatches, Lookups, conversation_settings, look_up_settings
from bot.metrics import Health, Metrics
from bot.models import Author, CommandResult, ConversationKey, ConversationSettings, Message
from bot.platform import Platform
from bot.providers.base import ChatRequest
from bot.providers.resilience import Attempt
from bot.rate_slots import SharedSlots
from bot.reply import INTERNAL_ERROR, Forced, Outcome, Reply, extend
from bot.skills import Skill, SkillRegistry
from bot.store import InboxEntry, Store, StreamingReply
from bot.streaming import Clock, Pacer, SystemClock
from bot.summaries import Summaries
from bot.tokens import TokenCalibration, estimate_tokens
from bot.windows import Windows

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from bot.scheduler import Scheduler

log = logging.getLogger(__name__)

IMAGE_TOKENS = 800  # a rough per-image charge against the context budget
RESTARTED_NOTE = "Cut off: Parley restarted before this reply was finished."


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        catalog: ModelCatalog,
        skills: SkillRegistry,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.skills = skills
        self.clock = clock or SystemClock()
        # On PostgreSQL every instance draws on the same platform budgets, kept by the database's clock
        # (which a test's virtual clock does not follow).
        shared = SharedSlots(store) if store.shared and clock is None else None
        self.pacer = Pacer(self.clock, shared)
        self.checkpoints = Checkpoints(store, self.clock)
        self.calibration = TokenCalibration()
        self.windows = Windows(store, int(settings.context_memory_mb * 2**20))  # recent turns, in memory
        self.look_ups = LookUpBatches(store)  # on PostgreSQL, a burst's look-ups read together
        self.platforms: dict[str, Platform] = {}
        self.addressing = Addressing(store, self.settings_for)
        self._gate = Gate(store)
        # Messages of each person in each conversation accepted here and not yet answered: while one is,
        # the next waits for its turn, and looks up what its reply needs once the turn is its own.
        self._asking: Counter[tuple[str, str]] = Counter()
        self._tasks: set[asyncio.Task[Outcome]] = set()
        self._closing = False  # set once drained: what arrives later waits, stored, for the next start
        self._trimmed: set[str] = set()  # conversations whose last reply already said turns were left out
        self.access = Access(settings)
        self.budgets = Budgets(store, settings.budgets, dead_after=settings.instance_timeout_seconds)
        self.metrics = Metrics()
        self.health = Health()
        self.scheduler: Scheduler | None = None  # set while schedules run (parley run)
        self.controls = Controls(self)
        self.summaries = Summaries(self)
        self.compare = Compare(self)

    @classmethod
    async def create(
        cls, settings: Settings, *, skills: Iterable[Skill] = (), clock: Clock | None = None
    ) -> Engine:
        store = await Store.open(settings.database_url, pool_size=settings.database_pool_size)
        return cls(settings, store, ModelCatalog.from_settings(settings), SkillRegistry(skills), clock=clock)

    def register(self, platform: Platform) -> None:
        self.platforms[platform.name] = platform

    async def aclose(self) -> None:
        await self.checkpoints.aclose()
        await self.summaries.aclose()
        await self.skills.aclose()
        await self.catalog.aclose()
        await self.store.close()

    # Messages in

    async def accept(
        self, message: Message, reply_to: dict[str, object] | None = None
    ) -> asyncio.Task[Outcome] | None:
        """Store a message the moment its adapter accepts it, then answer it in its turn.

        Returns the task that answers it (awaiting it gives the outcome), or None when this delivery was
        accepted before (a redelivered message is answered once) or Parley is stopping (it is answered at
        the next start).
        """
        if self.access.refusal(message.key, message.author, message.server_id):  # adapters said why
            self.metrics.refused.labels("access").inc()
            return None
        content, tokens = self._user_turn(message)
        asker = (str(message.key), message.author.id)
        early = _EarlyLookUp(self._look_up(message).read) if self._turn_free(message) else None
        self._asking[asker] += 1  # from now on the next message of theirs waits for this one
        try:
            entry = await self.store.accept(message, reply_to, content, tokens, early)
            if entry is None:
                log.info("%s: message %s was delivered again; already answered", message.key, message.id)
                return None
            if self._closing:  # stored, so the next start answers it
                log.info(
                    "%s: message %s arrived while stopping; it waits for the next start",
                    message.key,
                    message.id,
                )
                return None
            return self._submit(entry, early.lookups if early is not None else None)
        finally:
            self._answered(asker)

    def _turn_free(self, message: Message) -> bool:
        """Whether the reply to `message` may look up what it needs in the accept's own store hop: its turn
        is free (no earlier message of theirs here is still being answered, and no other instance shares
        the turns), and it is a reply that looks things up at all.

        Read in the accept, the look-up sees what it would see once the reply takes its turn a moment
        later; read there, it costs no hand-off to another thread of the store and back."""
        if self.store.shared or self._asking[(str(message.key), message.author.id)]:
            return False
        kind, skill, text = self._classify(message.text)
        return kind in ("message", "reply") or (skill is not None and bool(text))

    def _look_up(self, message: Message) -> LookUp:
        """What a reply to `message` reads before it starts."""
        return LookUp(message.key, override_targets(message), self.windows.read_ahead(str(message.key)))

    def _answered(self, asker: tuple[str, str]) -> None:
        self._asking[asker] -= 1
        if not self._asking[asker]:
            del self._asking[asker]

    def _user_turn(self, message: Message) -> tuple[str, int]:
        """What memory keeps of a message (nothing for a command), and its token estimate."""
        kind, _, text = self._classify(message.text)
        if kind == "command":
            return "", 0
        attached = read_attachments(message.attachments, vision=True)
        content = "\n\n".join(part for part in (text.strip(), attached.text) if part)
        return content, (estimate_tokens(content) + IMAGE_TOKENS * len(attached.images) if content else 0)

    def _classify(self, text: str) -> tuple[str, Skill | None, str]:
        """A command, a skill's command (`/web QUERY`), or a message; with the text that follows."""
        stripped = text.strip()
        if not stripped.startswith("/"):
            return "message", None, stripped
        name, _, rest = stripped[1:].partition(" ")
        if name.lower() == commands.ASK.name:  # a message typed as a command
            return "message", None, rest.strip()
        if name.lower() in commands.REPLIES:  # a reply with steps of its own (/summarize)
            return "reply", None, stripped
        skill = self.skills.by_command(name.lower())
        if skill is not None:
            return "skill", skill, rest.strip()
        return "command", None, stripped[1:]

    def _submit(self, entry: InboxEntry, lookups: Lookups | None = None) -> asyncio.Task[Outcome]:
        """Answer `entry` in a task of its own (`lookups`: what its reply needs, when read in the accept)."""
        message = entry.message
        asker = (str(message.key), message.author.id)
        task = asyncio.create_task(self._answer(entry, lookups), name=f"reply to {message.key} {message.id}")
        self._asking[asker] += 1
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _task: self._answered(asker))
        return task

    async def _answer(self, entry: InboxEntry, lookups: Lookups | None) -> Outcome:
        message = entry.message
        async with self._gate.turn(message.key, message.author.id, entry.id):
            try:
                surface = await self.platforms[message.key.platform].surface_for(message.key, entry.reply_to)
            except Exception:
                log.exception("%s: could not open a reply to message %s", message.key, message.id)
                await self.store.close_inbox(entry.id, "failed")
                return "error"
            kind, skill, text = self._classify(message.text)
            if kind == "command" and asks(text):
                return await self.compare.run(entry, text, surface)
            if kind == "command" and (redo := await self.controls.redo(entry, text)) is not None:
                return await self.controls.regenerate(redo, entry, surface)
            if kind == "command":
                result = await self.run_command(message, text)
                await self.pacer.renderer(surface).finish(result.text)
                await self.store.close_inbox(entry.id)
                return "command"
            if skill is not None and not text:
                await self.pacer.renderer(surface).finish(f"Usage: /{skill.command} — {skill.summary}.")
                await self.store.close_inbox(entry.id)
                return "command"
            if lookups is None:
                lookups = await self.look_ups(self._look_up(message))
            conf = conversation_settings(lookups.settings, self.settings.default_model)
            if kind == "reply":
                name, _, args = text[1:].partition(" ")
                steps = commands.REPLIES[name.lower()].steps
                assert steps is not None
                reply = Reply(
                    self, entry, surface, conf, steps=partial(steps, args=args.strip()), lookups=lookups
                )
            else:
                forced = Forced(skill, skill.arguments_for(text)) if skill is not None else None
                reply = Reply(self, entry, surface, conf, forced, lookups=lookups)
            return await self.controls.run(reply, entry, surface, conf.model)

    # After a crash, and at shutdown

    async def recover(self, platform_name: str, conversation: ConversationKey | None = None) -> None:
        """Finish what stopped instances left on this platform, or in one of its conversations (an
        earlier process, or on PostgreSQL
        another instance whose heartbeat stopped): repair the replies they cut short, then answer the
        messages they accepted but did not answer (closing, with a line, those too old to answer now).
        What this instance accepted or started is its own and left alone."""
        platform = self.platforms[platform_name]
        dead_after = self.settings.instance_timeout_seconds
        only = str(conversation) if conversation is not None else None
        for reply in await self.store.claim_streaming(platform_name, dead_after, only):
            await self._repair(platform, reply)
        now = time.time()
        for entry in await self.store.claim_pending(platform_name, dead_after, only):
            if now - entry.received_at <= self.settings.pending_max_age_seconds:
                self._submit(entry)
            else:
                await self._expire(platform, entry)

    async def _repair(self, platform: Platform, reply: StreamingReply) -> None:
        if reply.refs is None:  # nothing was shown: its message is still pending and is answered anew
            await self.store.drop_turn(reply.turn_id)
            return
        try:
            surface = await platform.reopen(ConversationKey.parse(reply.conversation), reply.refs)
            if reply.answers is not None:  # its Stop button becomes Regenerate
                offer(surface, ReplyControls(reply.answers))
            final = extend(reply.content, RESTARTED_NOTE)
            await self.pacer.renderer(relabelled(surface, reply.refs)).finish(final)
        except Exception:
            log.exception("%s: could not mark a reply cut off by the restart", reply.conversation)
        await self.store.interrupted(reply)

    async def _expire(self, platform: Platform, entry: InboxEntry) -> None:
        message = entry.message
        age = self.settings.pending_max_age_seconds / 60
        name = message.author.display_name
        note = extend("", f"Parley was offline and did not answer {name} within {age:g} minutes; ask again.")
        try:
            surface = await platform.surface_for(message.key, entry.reply_to)
            await self.pacer.renderer(surface).finish(note)
        except Exception:
            log.exception("%s: could not say that message %s went unanswered", message.key, message.id)
        await self.store.close_inbox(entry.id, "expired")

    async def drain(self, grace: float) -> None:
        """Let replies under way finish for up to `grace` seconds, then cut the rest off with a note.

        Replies still waiting their turn when cut stay pending in the inbox: the next start answers them."""
        deadline = asyncio.get_running_loop().time() + grace
        while self._tasks and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)  # messages may still arrive meanwhile
        self._closing = True
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # Commands and settings

    async def run_command(self, message: Message, line: str) -> CommandResult:
        if refusal := self.access.refusal(message.key, message.author, message.server_id):
            self.metrics.refused.labels("access").inc()
            return CommandResult(refusal)
        try:
            return await commands.run(self, message, line)
        except Exception:
            log.exception("command %r failed", line.split(maxsplit=1)[:1])
            return CommandResult(INTERNAL_ERROR)

    async def settings_for(self, key: ConversationKey) -> ConversationSettings:
        """Its own settings, else its channel's (a thread inherits until it chooses), else the defaults."""
        rows = await self.store.read(partial(look_up_settings, key=key))
        return conversation_settings(rows, self.settings.default_model)

    async def model_choices(
        self, key: ConversationKey, typed: str, limit: int = 25, *, wait: float | None = None
    ) -> list[str]:
        """Model names for a picker: the current one first, then those matching what was typed.

        With `wait`, answers within about that many seconds, from older listings if need be."""
        current = (await self.settings_for(key)).model
        if wait is None:
            names, _failures = await self.catalog.all_names()
        else:
            names = await self.catalog.names_within(wait)
        needle = typed.strip().lower()
        matches = [name for name in names if needle in name.lower() and name != current]
        if not needle or needle in current.lower():
            matches.insert(0, current)
        return matches[:limit]

    def may_change_settings(self, author: Author) -> bool:
        return author.is_channel_manager or self.access.admin(author)

    def is_admin(self, message: Message) -> bool:
        """A Parley admin: configured by id or role, or whoever runs the terminal chat."""
        return message.key.platform == "console" or self.access.admin(message.author)

    # What replies ask of the engine

    def left_out_note(self, key: ConversationKey, trimmed: bool) -> bool:
        """Whether this reply should say that older turns were left out: once, until they fit again."""
        conversation = str(key)
        if not trimmed:
            self._trimmed.discard(conversation)
            return False
        if conversation in self._trimmed:
            return False
        self._trimmed.add(conversation)
        return True

    def attempts_for(
        self, model: str, resolved: ResolvedModel
    ) -> Callable[[ChatRequest], Awaitable[list[Attempt]]]:
        """The model asked for, then its fallbacks, each with the request in its own model id."""

        async def attempts(request: ChatRequest) -> list[Attempt]:
            chain = [Attempt(resolved.name, resolved.provider, request)]
            # Chains are written for full names; a bare default model finds its chain by its full name.
            key = model if model in self.settings.fallbacks else resolved.name
            for name in self.settings.fallbacks.get(key, []):
                try:
                    fallback = await self.catalog.resolve(name)
                except UnknownModelError as error:
                    log.warning("skipping fallback %s for %s: %s", name, model, error)
                    continue
                chain.append(Attempt(name, fallback.provider, replace(request, model=fallback.model_id)))
            return chain

        return attempts


@dataclass(slots=True)
class _EarlyLookUp:
    """A reply's look-up, run in its message's accept (`Store.accept`'s `then`)."""

    read: Callable[[Connection], Lookups]
    lookups: Lookups | None = None  # what it read; None until then, or when it failed

    def __call__(self, conn: Connection) -> None:
        try:
            self.lookups = self.read(conn)
        except Exception:  # the message stays stored all the same; its reply looks up in its turn
            log.exception("the look-up in a message's accept failed")
