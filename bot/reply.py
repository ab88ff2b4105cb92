"""One reply from its first sign of life to its final text, and the promise that it always ends there."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

from bot.access import Refused
from bot.accounting import calibrate, estimate, priced
from bot.budgets import Reservation
from bot.catalog import ResolvedModel, UnknownModelError
from bot.citations import sources_footer
from bot.context import ReplyFailed, assemble
from bot.logs import log_event
from bot.lookups import Lookups
from bot.models import ConversationSettings, Surface
from bot.providers.base import ChatRequest, ProviderError, Usage
from bot.skills import Citations, Skill, SkillContext, prefetch
from bot.store import AssistantRecord, InboxEntry
from bot.stored_reply import StoredReply
from bot.toolloop import Answer, ToolLoop

if TYPE_CHECKING:
    from bot.engine import Engine

log = logging.getLogger(__name__)

INTERNAL_ERROR = "Something went wrong on our side while answering; it has been logged. Please try again."
SHUTDOWN_NOTE = "Cut off: Parley is restarting."
# Cancel a reply's task with this message (`task.cancel(STOPPED)`) when the person asking stopped it: the
# reply ends saying so, instead of saying that Parley is restarting, and is kept as cut off.
STOPPED = "stopped by the user"
STOPPED_NOTE = "Stopped."

Outcome = Literal["ok", "cut_off", "error", "refused", "command"]  # how it ended; "command": not a reply
SHUTDOWN_GRACE = 5.0  # seconds a cancelled reply has to close its message
# What the reply says when the model stopped early, by Finish reason.
FINISH_NOTES = {
    "length": "Cut off: the reply reached its length limit.",
    "context_window": "Cut off: the conversation filled the model's context window; /reset starts afresh.",
    "refusal": "The provider's safety filters stopped this reply.",
}


# A command's own way to answer (`/summarize`): returns notes for the person, like Reply's usual steps.
Steps = Callable[["Reply"], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Forced:
    """A skill a command runs before the model answers (`/web QUERY`), whatever its mode."""

    skill: Skill
    arguments: dict[str, Any]


LEFT_OUT_NOTE = "Older messages were left out to fit the model's context."
SUMMARIZED_NOTE = "Older messages reach the model as a summary, to fit its context."


class Reply:
    def __init__(
        self,
        engine: Engine,
        entry: InboxEntry,
        surface: Surface,
        conf: ConversationSettings,
        forced: Forced | None = None,
        steps: Steps | None = None,
        lookups: Lookups | None = None,  # what was read for it before it started (else it reads)
    ) -> None:
        self._engine = engine
        self._lookups = lookups
        self._own_steps = steps
        self._entry = entry
        self._conf = conf
        self._forced = forced
        self._surface = surface
        self._stored = StoredReply(engine.store, engine.checkpoints, entry, surface)
        self._answer = Answer(model=conf.model)
        self._citations = Citations()
        self._renderer = engine.pacer.renderer(surface, on_render=self._shown)
        self._reservation: Reservation | None = None  # what it holds against its budgets
        self._started = 0.0
        self._first_text: float | None = None
        self._after_request: list[Callable[[], object]] = []  # started once its request is out
        self.ending = False  # its final text is on its way: a stop now has nothing left to stop

    async def run(self) -> Outcome:
        """Answer on the surface; returns how the reply ended."""
        settings = self._engine.settings
        self._started = self._engine.clock.now()
        self._engine.metrics.active.inc()
        try:
            await self._surface.start()
        except Exception:
            log.warning("could not show that a reply is coming", exc_info=True)
        answer = self._answer
        outcome: Outcome = "error"
        try:
            async with asyncio.timeout(settings.reply_timeout):
                notes = await (self._own_steps(self) if self._own_steps else self._steps())
            outcome = "ok"
            final = self._final_text(notes)
        except Refused as refusal:
            final, outcome = str(refusal), "refused"
        except (ReplyFailed, UnknownModelError) as error:
            final = extend(answer.text, str(error))
        except ProviderError as error:
            final = extend(answer.text, error.user_message())
            outcome = "cut_off" if answer.text else "error"
            self._engine.metrics.provider_errors.labels(error.kind.value).inc()
        except TimeoutError:
            sentence = f"The reply took longer than {settings.reply_timeout:g} seconds and was stopped."
            final = extend(answer.text, sentence)
            outcome = "cut_off" if answer.text else "error"
        except asyncio.CancelledError as cancelled:
            self._request_out()
            await self._end_cancelled(STOPPED_NOTE if cancelled.args[:1] == (STOPPED,) else SHUTDOWN_NOTE)
            await self._account("cut_off", None, self._usage_rows())
            raise
        except Exception:
            log.exception("reply in %s failed", self._entry.message.key)
            final = extend(answer.text, INTERNAL_ERROR)
            outcome = "cut_off" if answer.text else "error"
        self._request_out()  # (a reply with no text, its request failed or never made)
        self.ending = True
        # A stop or a shutdown once the text is complete has nothing left to stop: the reply is shown
        # and stored as it is (within the grace a shutdown gives), its message closed, and the
        # cancellation goes on afterwards.
        cancelled: asyncio.CancelledError | None = None
        try:
            await self._renderer.finish(final)  # the render runs in a task of its own, which goes on
        except asyncio.CancelledError as error:
            cancelled = error
        recording = asyncio.ensure_future(self._end(outcome))
        try:
            await asyncio.shield(recording)
        except asyncio.CancelledError as error:
            cancelled = error
            await asyncio.wait({recording}, timeout=SHUTDOWN_GRACE)
        if cancelled is not None:
            raise cancelled
        return outcome

    async def _end(self, outcome: Outcome) -> None:
        """Store the reply and close its message, once its final text is on its way."""
        latency_ms = int((self._engine.clock.now() - self._started) * 1000)
        usage_rows = self._usage_rows()
        recorded = await self._stored.finish(self._record(outcome, latency_ms), usage_rows)
        self._log(outcome, latency_ms)
        await self._account(outcome, latency_ms / 1000, () if recorded else usage_rows)

    def _usage_rows(self) -> list[dict[str, Any]]:
        return self._answer.ledger.rows(self._entry.message, self._entry.id, time.time())

    async def _account(
        self, outcome: Outcome, seconds: float | None, unrecorded: Sequence[dict[str, Any]]
    ) -> None:
        """Record what the reply spent that its final record did not (`unrecorded`), release what it
        held against its budgets, count it."""
        engine, message = self._engine, self._entry.message
        try:
            if unrecorded:
                await engine.store.record_usage(unrecorded)
        except Exception:
            log.exception("could not record the usage of the reply in %s", message.key)
        if self._reservation is not None:
            await engine.budgets.settle(self._reservation)
        metrics = engine.metrics
        metrics.active.dec()
        metrics.replies.labels(message.key.platform, outcome).inc()
        metrics.spent(self._answer.ledger)
        if outcome == "refused":
            metrics.refused.labels("limit").inc()
        if seconds is not None:
            metrics.final_text.labels(message.key.platform).observe(seconds)

    async def hold(self, resolved: ResolvedModel, prompt_tokens: int, reply_room: int) -> str | None:
        """Count the reply against the person's rate limit and reserve its estimate against the budgets
        before anything is sent to the provider (Refused past either); returns the 80 % warning, if due."""
        engine, message = self._engine, self._entry.message
        engine.access.count_reply(message.key, message.author)
        usd, tokens = await estimate(engine.catalog, engine.settings, resolved, prompt_tokens, reply_room)
        overrides = self._lookups.budget_overrides if self._lookups is not None else None
        self._reservation = await engine.budgets.reserve(message, usd, tokens, overrides)
        return self._reservation.warning

    async def _steps(self) -> list[str]:
        """Model, context, skills first, then the model's own rounds; returns notes for the person."""
        engine = self._engine
        if self._entry.turn_id is None:
            raise ReplyFailed("There is nothing to answer: the message was empty.")
        resolved = await engine.catalog.resolve(self._conf.model)
        self._answer.model = resolved.name
        ahead = self._lookups.window if self._lookups is not None else None
        context = await assemble(
            engine.settings, engine.windows, engine.calibration, resolved, self._conf, self._entry, ahead
        )
        summarized = await engine.summaries.apply(
            context, str(self._entry.message.key), resolved, self._lookups, self._after_request.append
        )
        warning = await self.hold(resolved, context.prompt_estimate(), context.reply_room)
        skill_context = SkillContext(
            self._entry.message.key,
            self._entry.message.author,
            self._conf,
            engine.platforms.get(self._entry.message.key.platform),
            self._citations,
        )
        newest_first = (turn.content for turn in reversed(context.turns) if turn.role == "user")
        recent = tuple(islice(newest_first, 3))[::-1]  # not a walk over the whole window
        forced = (self._forced.skill, self._forced.arguments) if self._forced else None
        notes = list(context.notes)
        if warning:
            notes.append(warning)
        for result in await prefetch(
            engine.skills, recent[-1], recent, context.takes_tools, skill_context, forced
        ):
            if result.searched:
                self._answer.ledger.searches[result.searched] += 1
            context.add_material(result.text)
            if result.note and result.note not in notes:
                notes.append(result.note)
        if engine.left_out_note(self._entry.message.key, context.trimmed):
            notes.insert(0, SUMMARIZED_NOTE if summarized else LEFT_OUT_NOTE)
        tools = engine.skills.tools(self._conf.skills) if context.takes_tools else ()

        prompt_estimate = context.prompt_estimate()
        await self._tool_loop(resolved, skill_context).run(context.request(tools), self._answer)
        answer = self._answer
        calibrate(engine.calibration, answer.usage, answer.model, resolved, prompt_estimate, answer.rounds)
        notes += [note for note in answer.notes if note not in notes]
        if note := FINISH_NOTES.get(answer.finish or ""):
            notes.insert(0, note)
        return notes

    def _tool_loop(self, resolved: ResolvedModel, skill_context: SkillContext) -> ToolLoop:
        engine = self._engine

        async def price(usage: Usage, model: str) -> Usage:
            return await priced(engine.catalog, engine.settings, usage, model, resolved)

        return ToolLoop(
            engine.attempts_for(self._conf.model, resolved),
            price,
            engine.skills,
            skill_context,
            self._renderer,
            self._on_text,
            max_retries=engine.settings.max_retries,
            retry_after_cap=engine.settings.retry_after_cap,
            show_reasoning=engine.settings.show_reasoning,
        )

    # What a command's own steps use

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def entry(self) -> InboxEntry:
        return self._entry

    @property
    def conf(self) -> ConversationSettings:
        return self._conf

    @property
    def answer(self) -> Answer:
        return self._answer

    def show(self, text: str) -> None:
        """Add to what the reply shows before the model's text (a progress line); it only ever grows."""
        self._answer.text += text
        self._renderer.update(self._answer.shown)

    async def stream(self, request: ChatRequest, resolved: ResolvedModel) -> None:
        """Stream the model's answer to `request` into this reply, without tools."""
        skill_context = SkillContext(
            self._entry.message.key, self._entry.message.author, self._conf, None, self._citations
        )
        await self._tool_loop(resolved, skill_context).run(request, self._answer)

    def _on_text(self, answer: Answer) -> None:
        if self._first_text is None:
            self._request_out()
            self._first_text = self._engine.clock.now() - self._started
            self._engine.metrics.first_text.labels(self._entry.message.key.platform).observe(self._first_text)
        self._stored.checkpoint(answer.text, answer.model)

    def _request_out(self) -> None:
        """Start what waited for the reply's request to be out (a summary update nobody waits for)."""
        started, self._after_request = self._after_request, []
        for start in started:
            start()

    async def _shown(self) -> None:
        self._stored.shown(self._answer.text, self._answer.model)

    def _final_text(self, notes: list[str]) -> str:
        text = self._answer.shown
        if not self._answer.text and self._answer.finish != "refusal":  # its note says why there is none
            text = extend(text, "The model returned an empty reply.")
        if footer := sources_footer(self._answer.text, tuple(self._citations.sources)):
            text = f"{text}\n\n{footer}"
        for note in notes:
            text = extend(text, note)
        return text

    def _log(self, outcome: Outcome, latency_ms: int) -> None:
        """One line per answered message for operators: never what anyone wrote."""
        usage = self._answer.usage
        log_event(
            log,
            "reply",
            platform=self._entry.message.key.platform,
            conversation=str(self._entry.message.key),
            model=self._answer.model or None,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_ms=latency_ms,
            outcome=outcome,
        )

    def _record(self, outcome: Outcome, latency_ms: int) -> AssistantRecord:
        usage = self._answer.usage
        return AssistantRecord(
            content=self._answer.text,
            model=self._answer.model,
            outcome=outcome,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cost=usage.cost if usage else None,
            latency_ms=latency_ms,
        )

    async def _end_cancelled(self, note: str) -> None:
        """On shutdown or a stop, close the message and keep what was said, within a short grace period."""
        try:
            async with asyncio.timeout(SHUTDOWN_GRACE):
                await self._renderer.finish(extend(self._answer.text, note))
                await self._stored.finish(self._record("cut_off", 0))
        except (TimeoutError, asyncio.CancelledError):
            log.warning("could not close the reply in %s during shutdown", self._entry.message.key)


def extend(text: str, note: str) -> str:
    """Append a note in italics; the reply text only ever grows, which streaming surfaces rely on."""
    note = f"_{note}_"
    return f"{text}\n\n{note}" if text else note
