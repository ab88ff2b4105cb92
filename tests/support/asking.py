"""Asking the engine the way an adapter does: accept a message, wait for its reply, read its surface."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from bot.engine import Engine
from bot.models import Author, ConversationKey, Message
from tests.conftest import RecordingPlatform, RecordingSurface
from tests.support.llm_server import LLMServer, Script

ADA = Author("u-ada", "Ada")
CHANNEL = ConversationKey("test", "general")
_ids = itertools.count(1)


def msg(text: str, key: ConversationKey = CHANNEL, author: Author = ADA, **extra: Any) -> Message:
    extra.setdefault("id", f"m{next(_ids)}")
    return Message(key=key, author=author, text=text, **extra)


def surface_of(engine: Engine, message: Message) -> RecordingSurface:
    platform = engine.platforms["test"]
    assert isinstance(platform, RecordingPlatform)
    (surface,) = [s for _, reply_to, s in platform.surfaces if reply_to == {"message": message.id}]
    return surface


async def answer(engine: Engine, message: Message) -> RecordingSurface:
    task = await engine.accept(message, {"message": message.id})
    assert task is not None, "the engine took the message for a redelivery"
    await task
    return surface_of(engine, message)


async def ask(
    engine: Engine, text: str, key: ConversationKey = CHANNEL, author: Author = ADA, **extra: Any
) -> str:
    return (await answer(engine, msg(text, key, author, **extra))).final


async def first_render(engine: Engine, message: Message) -> RecordingSurface:
    """Wait until the reply to `message` has shown something."""
    platform = engine.platforms["test"]
    assert isinstance(platform, RecordingPlatform)
    while True:
        for _, reply_to, surface in platform.surfaces:
            if reply_to == {"message": message.id} and surface.renders:
                return surface
        await asyncio.sleep(0.01)


async def until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Wait for something another task does; fails rather than hanging."""
    try:
        async with asyncio.timeout(seconds):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def started(
    engine: Engine, llm: LLMServer, tokens: list[str], text: str = "tell me", author: Author = ADA
) -> tuple[asyncio.Semaphore, asyncio.Task[Any], RecordingSurface]:
    """A reply under way with its first token shown; each next token waits for a release of the gate."""
    gate = asyncio.Semaphore(0)
    llm.enqueue(Script(tokens=tokens, gate=gate))
    message = msg(text, author=author)
    reply = await engine.accept(message, {"message": message.id})
    assert reply is not None
    gate.release()
    return gate, reply, await first_render(engine, message)
