"""The terminal's side of the platform port: replies without an incoming message, and memory as history."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

from adapters.console.platform import ConsolePlatform
from adapters.console.surfaces import PlainSurface
from bot.models import Author, ConversationKey, Message
from tests.support.llm_server import LLMServer

KEY = ConversationKey("console", "notes")
ME = Author("terminal", "me", is_channel_manager=True)


def plain(out: io.StringIO) -> Callable[[], PlainSurface]:
    return lambda: PlainSurface(out, lambda: None)


async def test_a_reply_can_start_in_the_terminal_without_a_message(make_engine: Callable[..., Any]) -> None:
    engine = await make_engine()
    out = io.StringIO()
    port = ConsolePlatform(engine.store, plain(out))
    surface = await port.surface_for(KEY)
    await engine.pacer.renderer(surface).finish("Good morning: here is your digest.")
    assert out.getvalue() == "Good morning: here is your digest.\n"
    assert surface.refs is None  # printed text is never edited later


async def test_history_in_the_terminal_is_the_stored_conversation(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine()
    out = io.StringIO()
    engine.register(ConsolePlatform(engine.store, plain(out)))
    for index, text in enumerate(("first", "second", "third")):
        task = await engine.accept(Message(KEY, ME, text, id=f"m{index}"))
        assert task is not None
        await task
    port = engine.platforms["console"]
    entries = await port.history(KEY, limit=4)
    assert [(e.author_name, e.text, e.by_parley) for e in entries] == [
        ("me", "second", False),
        ("Parley", "echo: me: second", True),
        ("me", "third", False),
        ("Parley", "echo: me: third", True),
    ]
    newest = await port.history(KEY, limit=2)
    assert [e.text for e in newest] == ["third", "echo: me: third"]
    older = await port.history(KEY, limit=10, before=newest[0].id)
    assert [e.text for e in older] == ["first", "echo: me: first", "second", "echo: me: second"]
    later = await port.history(KEY, limit=1, after=older[0].id)
    assert [e.text for e in later] == ["echo: me: first"]


async def test_a_message_a_killed_chat_left_is_answered_when_the_chat_starts_again(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    crashed = await make_engine()
    await crashed.store.accept(Message(KEY, ME, "are you there?", id="m1"), None, "are you there?", 5)
    await crashed.aclose()
    engine = await make_engine()
    out = io.StringIO()
    engine.register(ConsolePlatform(engine.store, plain(out)))
    await engine.recover("console", KEY)
    await asyncio.gather(*engine._tasks)
    assert out.getvalue() == "echo: me: are you there?\n"
    assert await engine.store.pending("console") == []
