"""Long conversations keep their gist: the turns that no longer fit the model's window are folded into a
running summary, stored with the conversation and sent ahead of the recent turns.

The summary grows incrementally: each update folds the turns that fell out since the last one (a bounded
batch, oldest first) into the summary so far. Updates run in a task of their own, one at a time per
conversation; a reply waits for one at most SUMMARY_WAIT_SECONDS, then goes ahead with the summary it has,
and the update finishes for the next reply. A reply that does not wait at all (SUMMARY_WAIT_SECONDS=0)
starts the update once its own request is out, so that the two do not contend for the event loop and the
store's threads while its request is built and sent. A summary that cannot be made is logged and the
reply goes on without the newest part of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from bot.catalog import ResolvedModel, UnknownModelError
from bot.context import Context
from bot.lookups import Lookups
from bot.providers.base import ChatMessage, ChatRequest, ProviderError, TextDelta
from bot.store import Turn
from bot.tokens import estimate_tokens

if TYPE_CHECKING:
    from bot.engine import Engine

log = logging.getLogger(__name__)

SUMMARY_TOKENS = 600  # the most a summary may say (the model is asked for less)
BATCH_TURNS = 40  # turns folded in by one update
INSTRUCTIONS = (
    "You keep a running summary of a chat conversation for an assistant that can no longer see its "
    "older messages. Fold the new messages into the summary so far. Keep facts people stated about "
    "themselves and the world, names, decisions, open questions and promises; drop small talk. Write "
    "plain sentences, at most 200 words, and nothing but the summary."
)
HEADING = "Summary of the earlier conversation (older messages no longer shown):"


class Summaries:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._updates: dict[str, asyncio.Task[None]] = {}  # one update at a time, by conversation
        self._tasks: set[asyncio.Task[None]] = set()

    async def apply(
        self,
        context: Context,
        conversation: str,
        resolved: ResolvedModel,
        lookups: Lookups | None = None,
        later: Callable[[Callable[[], object]], None] | None = None,
    ) -> bool:
        """Put the conversation's summary ahead of its recent turns, brought up to date (waiting a
        bounded time) when turns fell out of the window since it was made; whether there was one.
        `lookups`: what the reply read before it started, the summary among it; `later`: where a reply
        that waits for no update puts what starts one, to run once its request is out."""
        if not context.trimmed or not context.turns:
            return False
        first_kept = context.turns[0].id
        stored = lookups.summary if lookups is not None else await self._engine.store.summary(conversation)
        wait = self._engine.settings.summary_wait_seconds
        stale = stored is None or stored[1] < first_kept - 1  # turns fell out since it was made
        if stale and wait <= 0 and later is not None:
            later(partial(self._update, conversation, first_kept, resolved))
        elif stale:
            update = self._update(conversation, first_kept, resolved)
            try:
                async with asyncio.timeout(wait):
                    await asyncio.shield(update)
            except TimeoutError:  # nothing new is stored while it runs
                log.info("%s: the summary is still being made; this reply uses the one before", conversation)
            else:
                stored = await self._engine.store.summary(conversation)  # as the update left it
        if stored is None:
            return False
        text = stored[0]
        room = max(context.budget // 3, 0) * 4  # characters: a summary never takes most of the window
        if len(text) > room:
            text = text[:room].rsplit(" ", 1)[0] + " …"
        context.add_material(f"{HEADING}\n{text}")
        return True

    def _update(self, conversation: str, first_kept: int, resolved: ResolvedModel) -> asyncio.Task[None]:
        running = self._updates.get(conversation)
        if running is not None and not running.done():
            return running
        task = asyncio.create_task(
            self._fold(conversation, first_kept, resolved), name=f"summary {conversation}"
        )
        self._updates[conversation] = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(conversation, done))
        return task

    def _done(self, conversation: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._updates.get(conversation) is task:
            del self._updates[conversation]

    async def _fold(self, conversation: str, first_kept: int, resolved: ResolvedModel) -> None:
        """One update; whatever goes wrong is logged here, since no reply may be waiting for it."""
        try:
            await self._fold_batch(conversation, first_kept, resolved)
        except (ProviderError, UnknownModelError) as error:
            log.warning("%s: could not update the summary (%s)", conversation, error)
        except Exception:
            log.exception("%s: could not update the summary", conversation)

    async def _fold_batch(self, conversation: str, first_kept: int, resolved: ResolvedModel) -> None:
        store = self._engine.store
        stored = await store.summary(conversation)
        so_far, upto = stored if stored is not None else ("", 0)
        fallen = await store.older_turns(conversation, upto, first_kept, BATCH_TURNS)
        if not fallen:
            return
        model = await self._model(resolved)
        if text := await _summarize(model, so_far, fallen):
            await store.set_summary(conversation, text, fallen[-1].id, model.name)

    async def _model(self, resolved: ResolvedModel) -> ResolvedModel:
        chosen = self._engine.settings.summary_model
        return await self._engine.catalog.resolve(chosen) if chosen else resolved

    async def forget(self, conversation: str) -> None:
        await self._engine.store.forget_summary(conversation)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _summarize(model: ResolvedModel, so_far: str, fallen: list[Turn]) -> str:
    lines = [
        f"{turn.author_name or 'Someone'}: {turn.content}"
        if turn.role == "user"
        else f"Assistant: {turn.content}"
        for turn in fallen
    ]
    prompt = f"Summary so far:\n{so_far or '(none yet)'}\n\nNew messages:\n" + "\n".join(lines)
    request = ChatRequest(
        model.model_id, (ChatMessage("user", prompt),), system=INSTRUCTIONS, max_tokens=SUMMARY_TOKENS
    )
    parts = [event.text async for event in model.provider.stream(request) if isinstance(event, TextDelta)]
    text = "".join(parts).strip()
    return text[: SUMMARY_TOKENS * 4] if estimate_tokens(text) > SUMMARY_TOKENS else text
