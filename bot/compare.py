"""`/compare MODEL_A MODEL_B [PROMPT]`: two models answer one question blind, side by side, then people vote.

Each side is an ordinary reply (stored from its first render, paced, its usage and budgets counted for
its own model, stoppable with /stop) on a message of its own, labelled A or B; which model is A is
drawn at random and stored. Once both have answered, the ballot is posted: its buttons carry the
comparison's id, so they work after a restart. A comparison is a side trip, not part of the
conversation: when it ends, memory leaves out its answers (and its question, when it was typed with
/compare), so the conversation goes on as before.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from bot import arena_store
from bot.arena import scope
from bot.arena_store import Comparison, Prompt
from bot.catalog import UnknownModelError
from bot.models import ConversationKey, RateLimit, RenderBudget, Surface
from bot.platform import Platform
from bot.reply import Outcome, Reply
from bot.store import InboxEntry
from bot.streaming import final_cost
from bot.tokens import estimate_tokens

if TYPE_CHECKING:
    from bot.engine import Engine

log = logging.getLogger(__name__)

COMMAND = "compare"
LABELS = ("A", "B")
USAGE = "Usage: /compare MODEL_A MODEL_B [PROMPT] — two models answer blind, then you vote."
SAME_MODEL = "Pick two different models to compare; both names are {model}."
NOTHING_ASKED = (
    "You have asked nothing here to compare on yet; add a prompt: /compare MODEL_A MODEL_B PROMPT."
)
RESTARTED = "This comparison was cut off by a restart; run /compare again."
NO_SECOND_MESSAGE = "Parley could not post the second answer here, so there is nothing to compare."
BALLOT = "Which answer is better? Vote to see which model wrote each."
TYPED_BALLOT = (
    "Which answer is better? Type /vote a, /vote b, /vote tie or /vote bad to see which model wrote each."
)
WORST_FIRST: tuple[Outcome, ...] = ("error", "cut_off", "refused", "ok")


@runtime_checkable
class Ballots(Protocol):
    """A platform with vote buttons: it posts a comparison's ballot in the conversation."""

    async def ballot(self, conversation: ConversationKey, comparison: int, text: str) -> None: ...


LABEL_REF = "compare_label"  # kept with a side's refs, so the repair after a crash shows the label too


class Labelled:
    """One side's surface: the platform's, with the side's label above the text."""

    def __init__(self, surface: Surface, label: str) -> None:
        self._surface = surface
        self._name = label
        self._label = f"**Answer {label}**\n\n"

    @property
    def budget(self) -> RenderBudget:
        return self._surface.budget

    async def start(self) -> None:
        await self._surface.start()

    async def render(self, text: str, *, final: bool) -> int | Sequence[RateLimit]:
        return await self._surface.render(self._label + text, final=final)

    def final_cost(self, text: str) -> Sequence[RateLimit]:
        return final_cost(self._surface, self._label + text)

    @property
    def refs(self) -> dict[str, Any] | None:
        refs = self._surface.refs
        return None if refs is None else {**refs, LABEL_REF: self._name}


def relabelled(surface: Surface, refs: Mapping[str, Any]) -> Surface:
    """A reopened reply's surface, labelled again when it was a side of a comparison."""
    label = refs.get(LABEL_REF)
    return Labelled(surface, label) if isinstance(label, str) else surface


@dataclass(frozen=True, slots=True)
class Begun:
    """A comparison stored and about to be answered: what both models answer, and the models that
    are unknown (by name as typed) with why."""

    comparison: Comparison
    prompt: str
    unknown: dict[str, UnknownModelError]


class Sides:
    """Both replies, as /stop sees them: stoppable until both have begun to end."""

    def __init__(self, replies: Sequence[Reply]) -> None:
        self._replies = replies

    @property
    def ending(self) -> bool:
        return all(reply.ending for reply in self._replies)


async def _refuse(error: UnknownModelError, reply: Reply) -> list[str]:
    """The steps of a side whose model is unknown: it ends with the one sentence that says so."""
    raise error


def asks(line: str) -> bool:
    """Whether a command line is /compare."""
    return line.strip().split(" ", 1)[0].lower() == COMMAND


class Compare:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def run(self, entry: InboxEntry, line: str, surface: Surface) -> Outcome:
        """Answer a /compare message: side A on `surface` (where the command is answered), side B in a
        message of its own in the conversation, then the ballot; or one sentence saying why not."""
        begun = await self._begin(entry, line)
        if isinstance(begun, str):
            return await self._say(entry, surface, begun)
        comparison, unknown = begun.comparison, begun.unknown
        engine, message = self._engine, entry.message
        platform = engine.platforms[message.key.platform]
        try:
            second_surface = await platform.surface_for(message.key)
        except Exception:
            log.exception("%s: could not open the second side of comparison %d", message.key, comparison.id)
            await engine.store.write(arena_store.settle(comparison, "failed"))
            return await self._say(entry, surface, NO_SECOND_MESSAGE)
        side = replace(entry, message=replace(message, text=begun.prompt), turn_id=comparison.question)
        conf = await engine.settings_for(message.key)
        replies = [
            Reply(
                engine,
                side,
                Labelled(shown, label),
                replace(conf, model=model),
                steps=partial(_refuse, unknown[model]) if model in unknown else None,
            )
            for shown, label, model in zip(
                (surface, second_surface), LABELS, (comparison.model_a, comparison.model_b), strict=True
            )
        ]
        state = "failed"
        try:
            with engine.controls.under_way(side, Sides(replies)):
                outcomes = await self._both(platform, replies)
            if all(outcome == "ok" for outcome in outcomes):
                state = "ready"
        finally:
            await engine.store.write(arena_store.settle(comparison, state))
        if state == "ready":
            await self._ballot(platform, message.key, comparison.id)
        return next(outcome for outcome in WORST_FIRST if outcome in outcomes)

    async def _begin(self, entry: InboxEntry, line: str) -> Begun | str:
        """The comparison a /compare line asks for, stored, or the sentence that says why there is none."""
        _command, _, rest = line.strip().partition(" ")
        first, _, rest = rest.strip().partition(" ")
        second, _, typed_prompt = rest.strip().partition(" ")
        if not second:
            return USAGE
        unknown: dict[str, UnknownModelError] = {}
        models = [await self._canonical(first, unknown), await self._canonical(second, unknown)]
        if models[0] == models[1]:
            return SAME_MODEL.format(model=models[0])
        prompt = await self._prompt(entry, typed_prompt.strip())
        if prompt is None:
            return NOTHING_ASKED
        random.shuffle(models)  # blind: which model shows as A is the draw, kept with the comparison
        message, store = entry.message, self._engine.store
        start = arena_store.start(entry.id, scope(message), str(message.key), prompt, (models[0], models[1]))
        comparison = await store.write(start)
        if comparison is None:  # begun before a restart: what it showed was repaired; it is void now
            if earlier := await store.read(arena_store.by_inbox(entry.id)):
                await store.write(arena_store.settle(earlier, "failed"))
            return RESTARTED
        return Begun(comparison, prompt.content, unknown)

    async def _canonical(self, typed: str, unknown: dict[str, UnknownModelError]) -> str:
        """The model's full name; an unknown one is kept as typed (with why in `unknown`), and its
        side ends saying so while the other answers."""
        try:
            name, _note = await self._engine.catalog.canonical(typed)
        except UnknownModelError as error:
            unknown[typed] = error
            return typed
        return name

    async def _prompt(self, entry: InboxEntry, typed: str) -> Prompt | None:
        """What both models answer: the prompt typed, else the person's last question here."""
        author = entry.message.author
        if typed:
            return Prompt(None, typed, author.id, author.display_name, estimate_tokens(typed))
        last = await self._engine.store.read(arena_store.last_question(str(entry.message.key), author.id))
        if last is None:
            return None
        return Prompt(last[0], last[1], author.id, author.display_name, 0)

    async def _both(self, platform: Platform, replies: Sequence[Reply]) -> list[Outcome]:
        """Both sides at once; one after the other where the platform shows one reply at a time (the
        terminal). A side that fails unexpectedly has ended in its own message; it counts as an error."""
        if getattr(platform, "one_reply_at_a_time", False):
            return [await reply.run() for reply in replies]
        results = await asyncio.gather(*(reply.run() for reply in replies), return_exceptions=True)
        outcomes: list[Outcome] = []
        for result in results:
            if isinstance(result, BaseException):
                log.error("a side of a comparison failed", exc_info=result)
                outcomes.append("error")
            else:
                outcomes.append(result)
        return outcomes

    async def _ballot(self, platform: Platform, key: ConversationKey, comparison: int) -> None:
        try:
            if isinstance(platform, Ballots):
                await platform.ballot(key, comparison, BALLOT)
            else:  # no buttons: the vote is typed
                await self._engine.pacer.renderer(await platform.surface_for(key)).finish(TYPED_BALLOT)
        except Exception:
            log.exception("%s: could not post the ballot of comparison %d", key, comparison)

    async def _say(self, entry: InboxEntry, surface: Surface, text: str) -> Outcome:
        await self._engine.pacer.renderer(surface).finish(text)
        await self._engine.store.close_inbox(entry.id)
        return "command"
