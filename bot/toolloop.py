"""The model's side of a reply: stream its answer, run the skills it calls, and stream again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from bot.accounting import Ledger
from bot.providers.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    ReasoningDelta,
    Replay,
    TextDelta,
    ToolCall,
    Usage,
)
from bot.providers.resilience import Attempt, ResilientStream
from bot.skills import SkillContext, SkillRegistry
from bot.streaming import PacedRenderer

MAX_TOOL_ROUNDS = 3  # provider calls that may end in tool use before the model must answer


@dataclass(slots=True)
class Answer:
    """What the model has said so far in one reply."""

    model: str  # who is answering: the model asked for, or the fallback that took over
    text: str = ""
    round_text: str = ""  # the text of the current provider call, when tools split a reply into several
    round_replay: Replay | None = None  # what that call's provider needs back with its tool calls
    reasoning_shown: str = ""
    finish: str | None = None
    rounds: int = 0
    notes: list[str] = field(default_factory=list)  # from the skills it called
    ledger: Ledger = field(default_factory=Ledger)  # what it spent, by model and search backend

    @property
    def shown(self) -> str:
        return self.reasoning_shown + self.text

    @property
    def usage(self) -> Usage | None:
        return self.ledger.total


class ToolLoop:
    def __init__(
        self,
        attempts: Callable[[ChatRequest], Awaitable[list[Attempt]]],
        price: Callable[[Usage, str], Awaitable[Usage]],
        registry: SkillRegistry,
        skill_context: SkillContext,
        renderer: PacedRenderer,
        on_text: Callable[[Answer], None],
        *,
        max_retries: int,
        retry_after_cap: float,
        show_reasoning: bool,
    ) -> None:
        self._attempts = attempts
        self._price = price
        self._registry = registry
        self._skill_context = skill_context
        self._renderer = renderer
        self._on_text = on_text
        self._max_retries = max_retries
        self._retry_after_cap = retry_after_cap
        self._show_reasoning = show_reasoning

    async def run(self, request: ChatRequest, answer: Answer) -> None:
        """Stream rounds until the model answers without calling a tool (the last round may not)."""
        for tool_round in range(MAX_TOOL_ROUNDS + 1):
            if tool_round == MAX_TOOL_ROUNDS:
                request = replace(request, tools=())  # the last round must answer, not call again
            calls = await self._round(request, answer)
            if not calls:
                return
            results = []
            for call in calls:
                result = await self._registry.call(call.name, call.arguments, self._skill_context)
                if result.note and result.note not in answer.notes:
                    answer.notes.append(result.note)
                if result.searched:
                    answer.ledger.searches[result.searched] += 1
                results.append(ChatMessage("tool", result.text, tool_call_id=call.id))
            assistant = ChatMessage(
                "assistant", answer.round_text, tool_calls=tuple(calls), replay=answer.round_replay
            )
            request = replace(request, messages=(*request.messages, assistant, *results))

    async def _round(self, request: ChatRequest, answer: Answer) -> list[ToolCall]:
        """One provider call, streamed into the reply. Returns the tools the model asked to run."""
        attempts = await self._attempts(request)
        stream = ResilientStream(
            attempts, max_retries=self._max_retries, retry_after_cap=self._retry_after_cap
        )
        calls: list[ToolCall] = []
        answer.round_text = ""
        answer.round_replay = None
        answer.rounds += 1
        async for event in stream.events():
            if isinstance(event, TextDelta):
                if answer.reasoning_shown and not answer.text:
                    answer.reasoning_shown += "\n\n"
                answer.text += event.text
                answer.round_text += event.text
                self._renderer.update(answer.shown)
                self._on_text(answer)
            elif isinstance(event, ReasoningDelta) and self._show_reasoning and not answer.text:
                answer.reasoning_shown = _quote(answer.reasoning_shown, event.text)
                self._renderer.update(answer.reasoning_shown)
            elif isinstance(event, ToolCall):
                calls.append(event)
            elif isinstance(event, Replay):
                answer.round_replay = event
            elif isinstance(event, Usage):  # priced by the model that spent it, a failed attempt's too
                model = stream.attempting or answer.model
                answer.ledger.add(model, await self._price(event, model))
            elif isinstance(event, Finish):
                answer.finish = event.reason
        answer.model = stream.answered_by or answer.model
        return calls


def _quote(shown: str, addition: str) -> str:
    body = shown.removeprefix("> ").replace("\n> ", "\n") + addition
    return "> " + body.replace("\n", "\n> ")
