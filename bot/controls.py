"""Stop and regenerate: what a reply's controls act on, who may use them, and the replies they start.

A control names only the question it acts on (the user turn a reply answers), so a button works after a
restart: who asked, in which conversation, is read from the store. Stopping needs the reply's task,
which only the process answering it has; a button on a reply that has ended says so.

A regeneration is a message of its own (`/regenerate #QUESTION [MODEL]`, typed or sent by a button),
accepted into the inbox like any other, so a click seen twice is answered once. Its reply answers the
question again, from the conversation as it stood then; the earlier answers stay stored as
alternatives, and memory uses the newest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bot.catalog import UnknownModelError
from bot.context import window
from bot.models import Author, CommandResult, ConversationKey, Message, Surface
from bot.reply import STOPPED, Outcome, Reply
from bot.store import InboxEntry
from bot.tokens import estimate_tokens

if TYPE_CHECKING:
    from bot.engine import Engine

REGENERATE = "regenerate"
# In an edit's reply_to: where the answer shows (its refs), so the regeneration replaces it in place.
REOPEN = "reopen"
MENU_MODELS = 25  # models offered in a reply's "another model" menu (Discord's select holds 25)
REFUSED = "Only the person who asked, or a channel manager, can stop or regenerate this reply."
GONE = "That question is no longer in memory, so it cannot be answered again."
ENDED = "That reply has already ended."
NOTHING_RUNNING = "Nothing you asked is being answered here right now."
NOTHING_ASKED = "There is no question here to answer again yet."


@dataclass(frozen=True, slots=True)
class ReplyControls:
    """What a reply's buttons act on: its question, and the models its menu offers (current first):
    listed while the reply is written, so the menu holds what was known by the time it ended."""

    question: int
    menu: asyncio.Future[list[str]] | tuple[str, ...] = ()

    @property
    def models(self) -> tuple[str, ...]:
        if isinstance(self.menu, tuple):
            return self.menu
        if not self.menu.done() or self.menu.cancelled() or self.menu.exception() is not None:
            return ()
        return tuple(self.menu.result())


@runtime_checkable
class Controllable(Protocol):
    """A surface that shows controls: Stop while the reply is written, Regenerate once it has ended."""

    def show_controls(self, controls: ReplyControls) -> None: ...


def offer(surface: Surface, controls: ReplyControls) -> None:
    if isinstance(surface, Controllable):
        surface.show_controls(controls)


def regenerate_line(question: int, model: str | None = None) -> str:
    """The message a Regenerate button sends on the clicker's behalf."""
    return f"/{REGENERATE} #{question}" + (f" {model}" if model else "")


class Ending(Protocol):
    """What a stop looks at: whether the reply (or, for /compare, both replies) began to end."""

    @property
    def ending(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Running:
    task: asyncio.Task[Any]
    reply: Ending
    conversation: ConversationKey
    asker: str

    @property
    def stoppable(self) -> bool:
        return not self.task.done() and not self.reply.ending


@dataclass(frozen=True, slots=True)
class Redo:
    """A regeneration that may go ahead: the command's inbox entry now answering the question again."""

    entry: InboxEntry
    model: str | None


class Controls:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._running: dict[int, _Running] = {}  # replies under way in this process, by question

    async def run(self, reply: Reply, entry: InboxEntry, surface: Surface, model: str) -> Outcome:
        """Run a reply (answering with `model`) with its controls shown, and stoppable while it runs."""
        if entry.turn_id is None:
            return await reply.run()
        menu = asyncio.ensure_future(self._menu(model))
        menu.add_done_callback(_quietly)
        offer(surface, ReplyControls(entry.turn_id, menu))
        try:
            with self.under_way(entry, reply):
                return await reply.run()
        finally:
            menu.cancel()

    async def _menu(self, current: str) -> list[str]:
        """The models to offer: the one answering first, then the others listed (from the catalog's
        cache, so a reply costs no extra reads)."""
        names, _failures = await self._engine.catalog.all_names()
        return [current, *(name for name in names if name != current)][:MENU_MODELS]

    @contextlib.contextmanager
    def under_way(self, entry: InboxEntry, reply: Ending) -> Iterator[None]:
        """While the current task answers `entry`'s question: /stop and a Stop button cancel it."""
        task = asyncio.current_task()
        assert task is not None and entry.turn_id is not None
        question = entry.turn_id
        running = self._running[question] = _Running(task, reply, entry.message.key, entry.message.author.id)
        try:
            yield
        finally:
            if self._running.get(question) is running:
                del self._running[question]

    async def refusal(self, question: int, author: Author, where: ConversationKey) -> str | None:
        """Why `author`, in `where`, may not regenerate the answer to `question`, or None when they may.
        A question is answered again only in its own channel: an id typed elsewhere finds nothing."""
        asked = await self._engine.store.question(question)
        if asked is None or ConversationKey.parse(asked.conversation).channel != where.channel:
            return GONE
        if asked.author_id != author.id and not self._engine.may_change_settings(author):
            return REFUSED
        return None

    async def stop(self, question: int, author: Author, where: ConversationKey) -> CommandResult | None:
        """Stop the reply to `question` (a Stop button in `where`); None when it was stopped, else why not."""
        running = self._running.get(question)
        if running is None or not running.stoppable or running.conversation.channel != where.channel:
            return CommandResult(ENDED)
        if running.asker != author.id and not self._engine.may_change_settings(author):
            return CommandResult(REFUSED)
        running.task.cancel(STOPPED)
        return None

    async def stop_command(self, message: Message, args: str) -> CommandResult:
        """`/stop`: the author's newest reply under way in this conversation (or, from a channel, in its
        threads); a manager's stops the newest reply there, whoever asked."""
        manager = self._engine.may_change_settings(message.author)
        here = [
            (question, running)
            for question, running in self._running.items()
            if running.stoppable
            and (running.conversation == message.key or running.conversation.channel == message.key)
        ]
        mine = [pair for pair in here if pair[1].asker == message.author.id] or (here if manager else [])
        if not mine:
            return CommandResult(REFUSED if here else NOTHING_RUNNING)
        _question, running = max(mine, key=lambda pair: pair[0])
        running.task.cancel(STOPPED)
        return CommandResult("Stopped.")

    async def edited(self, message: Message, version: str) -> asyncio.Task[Outcome] | None:
        """Someone edited a message Parley answered (`message` as it reads now, under its own id). Within
        EDIT_REGENERATE_SECONDS of its arrival the question takes the new text and its answer is
        regenerated in place: the edit is accepted as a message of its own (`version` tells one edit
        from the next), so an edit seen twice is answered once. Returns the task that answers it."""
        engine = self._engine
        key = message.key
        delivery = await engine.store.delivered(key.platform, key.channel_id, message.id)
        if delivery is None or delivery.turn_id is None:
            return None
        if time.time() - delivery.received_at > engine.settings.edit_regenerate_seconds:
            return None
        asked = await engine.store.question(delivery.turn_id)
        content = message.text.strip()
        if asked is None or not content or content == asked.content:  # nothing Parley reads changed
            return None
        refs = await engine.store.answer_refs(asked.id)
        await engine.store.edit_question(asked.id, content, estimate_tokens(content))
        reply_to = {**(delivery.reply_to or {}), **({REOPEN: refs} if refs else {})}
        again = Message(
            key=ConversationKey.parse(delivery.conversation),
            author=message.author,
            text=regenerate_line(asked.id),
            id=f"edit:{message.id}:{version}",
        )
        return await engine.accept(again, reply_to)

    async def deleted(self, key: ConversationKey, message_id: str) -> None:
        """Someone deleted a message Parley took in: memory drops its question and answers."""
        delivery = await self._engine.store.delivered(key.platform, key.channel_id, message_id)
        if delivery is not None and delivery.turn_id is not None:
            await self._engine.store.hide_exchange(delivery.turn_id, "deleted")

    async def forget_last(self, message: Message) -> CommandResult:
        """`/forget last`: the newest question here and its answers leave memory (they stay stored)."""
        asked = await self._engine.store.last_question(str(message.key))
        if asked is None:
            return CommandResult("There is nothing here to forget.")
        await self._engine.store.hide_exchange(asked.id, "forgotten")
        return CommandResult("Forgot the last question and its answer.", ephemeral=False)

    async def history(self, message: Message) -> CommandResult:
        """`/history`: what is stored here, how much of it the model reads, and what memory leaves out."""
        engine = self._engine
        conversation = str(message.key)
        stored, hidden, alternatives = await engine.store.memory_counts(conversation)
        if not stored:
            return CommandResult("Nothing is stored here yet.")
        conf = await engine.settings_for(message.key)
        try:
            resolved = await engine.catalog.resolve(conf.model)
        except UnknownModelError as error:
            return CommandResult(f"{stored} turns are stored here. {error}")
        budget, _room = window(
            engine.settings, engine.calibration, resolved, conf.system_prompt or engine.settings.system_prompt
        )
        seen, _trimmed = await engine.store.recall(conversation, budget)
        lines = [f"{stored} turns are stored here; {resolved.name} reads the newest {len(seen)} of them."]
        if hidden:
            lines.append(f"{hidden} are left out of memory (earlier answers, deleted or forgotten messages).")
        if alternatives:
            plural = "question has" if alternatives == 1 else "questions have"
            lines.append(f"{alternatives} {plural} earlier answers kept as alternatives.")
        if summary := await engine.store.summary(conversation):
            lines.append(f"Summary of the older turns:\n{summary[0]}")
        return CommandResult("\n".join(lines))

    async def redo(self, entry: InboxEntry, line: str) -> Redo | CommandResult | None:
        """The regeneration a command asks for (None: the command is another one), or why it cannot be."""
        name, _, rest = line.strip().partition(" ")
        if name.lower() != REGENERATE:
            return None
        words = rest.split()
        question_id: int | None = None
        if words and words[0].startswith("#") and words[0][1:].isdigit():
            question_id = int(words.pop(0)[1:])
        store = self._engine.store
        asked = (
            await store.question(question_id)
            if question_id is not None
            else await store.last_question(str(entry.message.key))
        )
        if asked is None:
            return CommandResult(GONE if question_id is not None else NOTHING_ASKED)
        if refusal := await self.refusal(asked.id, entry.message.author, entry.message.key):
            return CommandResult(refusal)
        model = None
        if words:
            try:
                model, _note = await self._engine.catalog.canonical(" ".join(words))
            except UnknownModelError as error:
                return CommandResult(str(error))
        message = replace(entry.message, key=ConversationKey.parse(asked.conversation), text=asked.content)
        return Redo(replace(entry, message=message, turn_id=asked.id), model)

    async def regenerate(self, redo: Redo | CommandResult, entry: InboxEntry, surface: Surface) -> Outcome:
        """Answer the question again on `surface` (or say why not); memory then uses the newest answer."""
        engine = self._engine
        if isinstance(redo, CommandResult):
            await engine.pacer.renderer(surface).finish(redo.text)
            await engine.store.close_inbox(entry.id)
            return "command"
        conf = await engine.settings_for(redo.entry.message.key)
        if redo.model is not None:
            conf = replace(conf, model=redo.model)
        question = redo.entry.turn_id
        assert question is not None
        try:
            return await self.run(Reply(engine, redo.entry, surface, conf), redo.entry, surface, conf.model)
        finally:
            await engine.store.keep_newest_answer(question)


def _quietly(menu: asyncio.Future[list[str]]) -> None:
    """A menu that could not be listed is left out of the controls; the reply says nothing of it."""
    if not menu.cancelled():
        menu.exception()
