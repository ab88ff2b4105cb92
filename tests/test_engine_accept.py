"""A reply whose turn is free looks up what it needs in its message's accept: one store hop before its
request instead of two (SQLite, where no other instance shares the turns)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bot import lookups as lookups_module
from bot import windows as windows_module
from bot.engine import Engine
from tests.support.asking import answer, ask, msg
from tests.support.llm_server import LLMServer
from tests.support.store_reads import count_reads


async def test_a_free_turn_reads_nothing_apart_from_its_accept_also_after_a_redelivery(
    engine: Engine, llm: LLMServer
) -> None:
    assert await ask(engine, "first") == "echo: Ada: first"  # the window is read in full once
    reads = count_reads(engine)
    again = msg("second")
    assert (await answer(engine, again)).final == "echo: Ada: second"
    assert reads == []  # the look-up came back with the accept
    assert await engine.accept(again, {"message": again.id}) is None  # a redelivery: nothing owed
    assert await ask(engine, "third") == "echo: Ada: third"
    assert reads == []  # the redelivery left the turn free
    assert engine.windows.reads == {"full": 1, "new": 0, "ahead": 2}


async def test_a_new_conversations_window_is_filled_by_the_read_in_its_accept(
    engine: Engine, llm: LLMServer
) -> None:
    reads = count_reads(engine)
    assert await ask(engine, "first") == "echo: Ada: first"
    assert reads == []  # the newest turns, read in the accept, were all the conversation had
    assert engine.windows.reads == {"full": 1, "new": 0, "ahead": 0}
    assert await ask(engine, "second") == "echo: Ada: second"
    assert reads == []
    _system, *turns = llm.chat_requests()[-1].json["messages"]
    assert [turn["content"] for turn in turns] == ["Ada: first", "echo: Ada: first", "Ada: second"]


async def test_a_longer_conversation_not_held_is_read_in_full_in_its_turn(
    make_engine: Callable[..., Any], llm: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the few turns read ahead, the window is read in full as before (here by another engine on the
    same database, which holds no window yet)."""
    monkeypatch.setattr(windows_module, "AHEAD_PAGE", 4)
    first, later = await make_engine(), await make_engine()
    for text in ("one", "two"):
        assert await ask(first, text) == f"echo: Ada: {text}"
    reads = count_reads(later)
    assert await ask(later, "three") == "echo: Ada: three"
    assert reads == ["_full"]  # five turns: more than were read ahead
    _system, *turns = llm.chat_requests()[-1].json["messages"]
    assert [turn["content"] for turn in turns][-3:] == ["Ada: two", "echo: Ada: two", "Ada: three"]
    assert len(turns) == 5


async def test_a_look_up_that_fails_in_the_accept_leaves_the_message_stored_and_answered(
    engine: Engine, llm: LLMServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The look-up shares the accept's transaction: when it fails, the message is stored all the same,
    and its reply looks up again in its turn."""
    looked_up = lookups_module.look_up
    calls: list[str] = []

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append("look_up")
        if len(calls) == 1:
            raise RuntimeError("the look-up broke")
        return looked_up(*args, **kwargs)

    monkeypatch.setattr(lookups_module, "look_up", failing_once)  # the accept's, and the one in its turn
    message = msg("still there?")
    assert (await answer(engine, message)).final == "echo: Ada: still there?"
    assert calls == ["look_up", "look_up"]  # in the accept (failed), then in its turn
    assert "the look-up in a message's accept failed" in caplog.text
    assert await engine.accept(message, {"message": message.id}) is None  # it was stored
