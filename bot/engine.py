"""The conversation engine: turns a normalized Message into a command answer or a streamed model reply."""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, replace
from typing import Literal

from bot import commands
from bot.attachments import read_attachments
from bot.catalog import ModelCatalog, ResolvedModel, UnknownModelError
from bot.config import Settings
from bot.logs import log_event
from bot.models import Author, CommandResult, ConversationKey, ConversationSettings, Message, Surface
from bot.providers.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    ProviderError,
    ReasoningDelta,
    Replay,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)
from bot.providers.resilience import Attempt, ResilientStream
from bot.store import AssistantRecord, Store, Turn
from bot.streaming import Clock, PacedRenderer, Pacer, SystemClock
from bot.tokens import TokenCalibration, estimate_tokens
from skills.base import Source
from skills.citations import sources_footer
from skills.web_search import WebSearch, looks_time_sensitive, search_query, tool_arguments

log = logging.getLogger(__name__)

MAX_TOOL_ROUNDS = 3  # provider calls that may end in tool use before the model must answer
IMAGE_TOKENS = 800  # a rough per-image charge against the context budget
CHECKPOINT_SECONDS = 2.0  # how often a streaming reply's text is saved, so a crash loses little
INTERNAL_ERROR = "Something went wrong on our side while answering; it has been logged. Please try again."
# What the reply says when the model stopped early, by Finish reason.
FINISH_NOTES = {
    "length": "Cut off: the reply reached its length limit.",
    "context_window": "Cut off: the conversation filled the model's context window; /reset starts afresh.",
    "refusal": "The provider's safety filters stopped this reply.",
}
# Cancel a reply's task with this message (`task.cancel(STOPPED)`) when the person asking stopped it: the
# reply ends saying so, instead of saying that Parley is restarting, and is kept as cut off.
STOPPED = "stopped by the user"

Outcome = Literal["ok", "cut_off", "error"]  # how a reply ended; commands and usage hints count as "ok"


class ReplyFailed(Exception):
    """A reply that cannot start; the message is the one sentence the user sees."""


@dataclass(slots=True)
class _Reply:
    """What one reply has gathered so far."""

    model: str = ""  # set once the user turn is stored: from then on the reply is saved whatever happens
    text: str = ""
    round_text: str = ""  # the text of the current provider call, when tools split a reply into several
    round_replay: Replay | None = None  # what that call's provider needs back with its tool calls
    sources: tuple[Source, ...] = ()
    reasoning_shown: str = ""
    usage: Usage | None = None
    finish: str | None = None
    turn_id: int | None = None
    last_checkpoint: float = 0.0


class Engine:
    def __init__(
        self, settings: Settings, store: Store, catalog: ModelCatalog, *, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.clock = clock or SystemClock()
        self.pacer = Pacer(self.clock)
        self.calibration = TokenCalibration()
        self.web = WebSearch(settings)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._trimmed: set[str] = (
            set()
        )  # conversations whose last reply already said older turns were left out

    @classmethod
    async def create(cls, settings: Settings, *, clock: Clock | None = None) -> Engine:
        store = await Store.open(settings.database_url)
        return cls(settings, store, ModelCatalog.from_settings(settings), clock=clock)

    async def aclose(self) -> None:
        await self.web.aclose()
        await self.catalog.aclose()
        await self.store.close()

    # Entry points for adapters

    async def handle(self, message: Message, surface: Surface) -> Outcome:
        """Answer on the surface with a command's answer or a streamed reply; never leave it hanging."""
        text = message.text.strip()
        web_query = None
        if text.lower() == "/web" or text.lower().startswith("/web "):
            web_query = text[4:].strip()
            if not web_query:
                await self.pacer.renderer(surface).finish("Say what to search for: /web QUERY")
                return "ok"
            message = replace(message, text=web_query)
        elif text.startswith("/"):
            result = await self.run_command(message, text[1:])
            await self.pacer.renderer(surface).finish(result.text)
            return "ok"
        async with self._lock(message.key):
            return await self._reply(message, surface, web_query)

    async def run_command(self, message: Message, line: str) -> CommandResult:
        try:
            return await commands.run(self, message, line)
        except Exception:
            log.exception("command %r failed", line.split(maxsplit=1)[:1])
            return CommandResult(INTERNAL_ERROR)

    async def settings_for(self, key: ConversationKey) -> ConversationSettings:
        keys = [str(key), str(key.channel)] if key.thread_id else [str(key)]
        merged: dict[str, object] = {}
        for row in reversed(await self.store.settings(keys)):  # channel first, thread overrides
            merged.update({name: value for name, value in row.items() if value is not None})
        return ConversationSettings(
            model=str(merged.get("model") or self.settings.default_model),
            system_prompt=str(merged["system_prompt"]) if merged.get("system_prompt") else None,
            search_mode=str(merged.get("search_mode") or "off"),
            autoreply=bool(merged.get("autoreply") or False),
        )

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
        return (
            author.is_channel_manager
            or author.id in self.settings.admin_user_ids
            or any(role in self.settings.admin_role_ids for role in author.role_ids)
        )

    def _lock(self, key: ConversationKey) -> asyncio.Lock:
        # One reply at a time per conversation, so answers never arrive out of order.
        lock = self._locks.get(str(key))
        if lock is None:
            lock = self._locks[str(key)] = asyncio.Lock()
        return lock

    # Replies

    async def _reply(self, message: Message, surface: Surface, web_query: str | None = None) -> Outcome:
        renderer = self.pacer.renderer(surface)
        started = self.clock.now()
        reply = _Reply(last_checkpoint=started)
        conversation = str(message.key)
        try:
            await surface.start()
        except Exception:
            log.warning("could not show that a reply is coming", exc_info=True)
        outcome: Outcome = "error"
        try:
            async with asyncio.timeout(self.settings.reply_timeout):
                notes = await self._stream(message, renderer, reply, web_query)
            outcome = "ok"
            final = self._finish_text(reply, notes)
        except (ReplyFailed, UnknownModelError) as error:
            final = _extend(reply.text, str(error))
        except ProviderError as error:
            final = _extend(reply.text, error.user_message())
            outcome = "cut_off" if reply.text else "error"
        except TimeoutError:
            sentence = f"The reply took longer than {self.settings.reply_timeout:g} seconds and was stopped."
            final = _extend(reply.text, sentence)
            outcome = "cut_off" if reply.text else "error"
        except asyncio.CancelledError as cancelled:
            stopped = cancelled.args[:1] == (STOPPED,)
            note = "Stopped." if stopped else "Cut off: Parley is restarting."
            await self._end_cancelled(renderer, reply, conversation, note)
            raise
        except Exception:
            log.exception("reply in %s failed", conversation)
            final = _extend(reply.text, INTERNAL_ERROR)
            outcome = "cut_off" if reply.text else "error"
        await renderer.finish(final)
        latency_ms = int((self.clock.now() - started) * 1000)
        if reply.model:
            await self._save_reply(conversation, reply, outcome, latency_ms)
        usage = reply.usage
        log_event(
            log,
            "reply",
            platform=message.key.platform,
            conversation=conversation,
            model=reply.model or None,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            latency_ms=latency_ms,
            outcome=outcome,
        )
        return outcome

    async def _stream(
        self, message: Message, renderer: PacedRenderer, reply: _Reply, web_query: str | None
    ) -> list[str]:
        """Store the user turn, assemble context, stream the model's answer. Returns notes for the user.

        `web_query` forces one web search for that query (the /web command), whatever the search mode.
        """
        conversation = str(message.key)
        conf = await self.settings_for(message.key)
        resolved = await self.catalog.resolve(conf.model)
        vision = bool(resolved.info and resolved.info.vision)
        attached = read_attachments(message.attachments, vision=vision)
        content = "\n\n".join(part for part in (message.text.strip(), attached.text) if part)
        if not content and not attached.images:
            raise ReplyFailed("There is nothing to answer: the message was empty.")
        tokens = estimate_tokens(content) + IMAGE_TOKENS * len(attached.images)
        system = conf.system_prompt or self.settings.system_prompt
        budget, reply_room = self._budget(resolved, system)
        user_turn, turns, trimmed = await self.store.add_user_turn_and_recall(
            conversation, message.author.id, message.author.display_name, content, tokens, budget
        )
        reply.model = resolved.name
        notes = list(attached.notes)
        tools: tuple[ToolSpec, ...] = ()
        takes_tools = bool(resolved.info and resolved.info.tools)
        mode = "on" if web_query is not None else conf.search_mode
        if mode == "on" or (mode == "auto" and not takes_tools and looks_time_sensitive(content)):
            query = web_query or search_query([t.content for t in turns if t.role == "user"][-3:])
            found = await self.web.search(query)
            reply.sources += found.sources
            notes += [found.note] if found.note else []
            system = f"{system}\n\n{found.text}"
            turns, dropped = _fit(turns, budget - estimate_tokens(found.text))
            trimmed = trimmed or dropped
        elif mode == "auto" and takes_tools:
            tools = (self.web.skill().tool_spec(),)
        if not turns or turns[-1].id != user_turn:
            raise ReplyFailed(
                f"Your message is too long for {resolved.name}: it fits about {max(budget, 0):,} tokens. "
                "Shorten it or pick a model with a larger context."
            )
        if not trimmed:
            self._trimmed.discard(conversation)
        elif conversation not in self._trimmed:
            self._trimmed.add(conversation)
            notes.insert(0, "Older messages were left out to fit the model's context.")
        messages = [_chat_message(turn) for turn in turns if turn.content]
        messages[-1] = replace(messages[-1], images=tuple(attached.images))
        request = ChatRequest(
            resolved.model_id, tuple(messages), system=system, max_tokens=reply_room, tools=tools
        )
        prompt_estimate = estimate_tokens(system) + sum(turn.tokens for turn in turns)
        for tool_round in range(MAX_TOOL_ROUNDS + 1):
            if tool_round == MAX_TOOL_ROUNDS:
                request = replace(request, tools=())  # the last round must answer, not search again
            calls = await self._stream_round(conversation, conf.model, resolved, request, renderer, reply)
            if not calls:
                break
            results = [
                ChatMessage("tool", await self._run_skill(call, reply, notes), tool_call_id=call.id)
                for call in calls
            ]
            assistant = ChatMessage(
                "assistant", reply.round_text, tool_calls=tuple(calls), replay=reply.round_replay
            )
            request = replace(request, messages=(*request.messages, assistant, *results))
        if reply.usage and reply.model == resolved.name and tool_round == 0:  # one call: a clean comparison
            self.calibration.observe(resolved.name, prompt_estimate, reply.usage.prompt_tokens)
        if note := FINISH_NOTES.get(reply.finish or ""):
            notes.insert(0, note)
        return notes

    async def _stream_round(
        self,
        conversation: str,
        model: str,
        resolved: ResolvedModel,
        request: ChatRequest,
        renderer: PacedRenderer,
        reply: _Reply,
    ) -> list[ToolCall]:
        """One provider call, streamed into the reply. Returns the tools the model asked to run."""
        attempts = [Attempt(resolved.name, resolved.provider, request)]
        attempts += await self._fallbacks(
            model if model in self.settings.fallbacks else resolved.name, request
        )
        stream = ResilientStream(
            attempts, max_retries=self.settings.max_retries, retry_after_cap=self.settings.retry_after_cap
        )
        calls: list[ToolCall] = []
        usage: Usage | None = None
        reply.round_text = ""
        reply.round_replay = None
        async for event in stream.events():
            if isinstance(event, TextDelta):
                if reply.reasoning_shown and not reply.text:
                    reply.reasoning_shown += "\n\n"
                reply.text += event.text
                reply.round_text += event.text
                renderer.update(reply.reasoning_shown + reply.text)
                await self._checkpoint(conversation, reply)
            elif isinstance(event, ReasoningDelta) and self.settings.show_reasoning and not reply.text:
                reply.reasoning_shown = _quote(reply.reasoning_shown, event.text)
                renderer.update(reply.reasoning_shown)
            elif isinstance(event, ToolCall):
                calls.append(event)
            elif isinstance(event, Replay):
                reply.round_replay = event
            elif isinstance(event, Usage):
                usage = event
            elif isinstance(event, Finish):
                reply.finish = event.reason
        reply.model = stream.answered_by or reply.model
        if usage is not None:
            reply.usage = _add_usage(reply.usage, await self._priced(usage, reply.model, resolved))
        return calls

    async def _priced(self, usage: Usage, model: str, resolved: ResolvedModel) -> Usage:
        """Usage with its cost: as the provider reported it, else from the answering model's listed prices."""
        if usage.cost is not None:
            return usage
        try:  # a fallback's listing is cached: choosing the fallbacks resolved it
            info = resolved.info if model == resolved.name else await self.catalog.info(model)
        except UnknownModelError:
            return usage
        if info is None or info.prompt_price is None:
            return usage
        cost = usage.prompt_tokens * info.prompt_price + usage.completion_tokens * (
            info.completion_price or 0.0
        )
        return replace(usage, cost=cost)

    async def _run_skill(self, call: ToolCall, reply: _Reply, notes: list[str]) -> str:
        """Run the skill a model asked for; what the model reads back, failures included."""
        skill = self.web.skill()
        if call.name != skill.name:
            return f"There is no tool named {call.name}."
        result = await skill.run(tool_arguments(call.arguments), len(reply.sources) + 1)
        reply.sources += result.sources
        if result.note and result.note not in notes:
            notes.append(result.note)
        return result.text

    def _budget(self, resolved: ResolvedModel, system: str) -> tuple[int, int]:
        """History tokens that fit the model's window (in estimate units), and the room kept for the reply."""
        info = resolved.info
        context_length = (info.context_length if info else None) or self.settings.default_context_length
        reply_room = min(self.settings.reply_max_tokens, max(256, context_length // 4))
        if info and info.max_output_tokens:
            reply_room = min(reply_room, info.max_output_tokens)
        factor = self.calibration.factor(resolved.name)
        return int((context_length - reply_room) / factor) - estimate_tokens(system), reply_room

    async def _fallbacks(self, model: str, request: ChatRequest) -> list[Attempt]:
        chain = []
        for name in self.settings.fallbacks.get(model, []):
            try:
                resolved = await self.catalog.resolve(name)
            except UnknownModelError as error:
                log.warning("skipping fallback %s for %s: %s", name, model, error)
                continue
            chain.append(Attempt(name, resolved.provider, replace(request, model=resolved.model_id)))
        return chain

    async def _checkpoint(self, conversation: str, reply: _Reply) -> None:
        """Save a long reply every few seconds, so a crash loses at most those seconds of its text.

        Short replies finish before the first checkpoint and are written once, at the end.
        """
        now = self.clock.now()
        if now - reply.last_checkpoint < CHECKPOINT_SECONDS:
            return
        reply.last_checkpoint = now
        record = AssistantRecord(content=reply.text, model=reply.model, outcome="streaming")
        if reply.turn_id is None:
            reply.turn_id = await self.store.add_assistant_turn(
                conversation, record, estimate_tokens(reply.text)
            )
        else:
            await self.store.update_assistant_turn(reply.turn_id, record, estimate_tokens(reply.text))

    async def _save_reply(self, conversation: str, reply: _Reply, outcome: str, latency_ms: int) -> None:
        usage = reply.usage
        record = AssistantRecord(
            content=reply.text,
            model=reply.model,
            outcome=outcome,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cost=usage.cost if usage else None,
            latency_ms=latency_ms,
        )
        tokens = estimate_tokens(reply.text)
        try:
            if reply.turn_id is None:
                await self.store.add_assistant_turn(conversation, record, tokens)
            else:
                await self.store.update_assistant_turn(reply.turn_id, record, tokens)
        except Exception:
            log.exception("could not save the reply in %s", conversation)

    async def _end_cancelled(
        self, renderer: PacedRenderer, reply: _Reply, conversation: str, note: str
    ) -> None:
        """On shutdown or a stop, close the message and keep what was said, within a short grace period."""
        try:
            async with asyncio.timeout(5):
                await renderer.finish(_extend(reply.text, note))
                if reply.model:
                    await self._save_reply(conversation, reply, "cut_off", 0)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("could not close the reply in %s during shutdown", conversation)

    def _finish_text(self, reply: _Reply, notes: list[str]) -> str:
        text = reply.reasoning_shown + reply.text
        if not reply.text and reply.finish != "refusal":  # a refusal's note says why there is nothing
            text = _extend(text, "The model returned an empty reply.")
        if footer := sources_footer(reply.text, reply.sources):
            text = f"{text}\n\n{footer}"
        for note in notes:
            text = _extend(text, note)
        return text


def _fit(turns: list[Turn], budget: int) -> tuple[list[Turn], bool]:
    """Drop the oldest turns until the rest fit `budget`; says whether any were dropped."""
    total = sum(turn.tokens for turn in turns)
    start = 0
    while total > budget and start < len(turns) - 1:
        total -= turns[start].tokens
        start += 1
    return turns[start:], start > 0


def _add_usage(before: Usage | None, more: Usage) -> Usage:
    """Usage over every provider call of one reply."""
    if before is None:
        return more
    cost = None if before.cost is None and more.cost is None else (before.cost or 0.0) + (more.cost or 0.0)
    return Usage(
        before.prompt_tokens + more.prompt_tokens, before.completion_tokens + more.completion_tokens, cost
    )


def _chat_message(turn: Turn) -> ChatMessage:
    if turn.role == "user":
        return ChatMessage(
            "user", f"{turn.author_name}: {turn.content}" if turn.author_name else turn.content
        )
    return ChatMessage("assistant", turn.content)


def _extend(text: str, note: str) -> str:
    """Append a note in italics; the reply text only ever grows, which streaming surfaces rely on."""
    note = f"_{note}_"
    return f"{text}\n\n{note}" if text else note


def _quote(shown: str, addition: str) -> str:
    body = shown.removeprefix("> ").replace("\n> ", "\n") + addition
    return "> " + body.replace("\n", "\n> ")
