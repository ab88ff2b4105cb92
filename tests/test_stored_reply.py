"""A reply's row is written beside its renders: a slow store never holds up the reply on the platform."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from bot.checkpoints import CHECKPOINT_SECONDS
from tests.support.asking import ask, started, until
from tests.support.clock import FakeClock
from tests.support.llm_server import LLMServer, Script


async def assistant_rows(engine: Any) -> list[tuple[str, str, str | None]]:
    sql = "SELECT content, outcome, reply_refs FROM turns WHERE role = 'assistant' ORDER BY id"
    return await engine.store.read(lambda conn: [tuple(row) for row in conn.exec_driver_sql(sql)])


def refs_of(surface: Any) -> str:
    return json.dumps({"surface": surface.id})


async def rows_become(engine: Any, expected: list[tuple[str, str, str | None]]) -> None:
    rows: list[tuple[str, str, str | None]] = []
    try:
        async with asyncio.timeout(10):
            while (rows := await assistant_rows(engine)) != expected:
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"the rows stayed {rows}, not {expected}") from None


async def test_renders_go_on_while_the_first_renders_row_waits_for_the_store(
    make_engine: Callable[..., Any], llm: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's write at the first render may take seconds under load: the edits after it go out
    meanwhile, what they showed is saved with the next batch of checkpoints once the row exists, and the
    final record updates that row (one row, never two)."""
    clock = FakeClock()
    engine = await make_engine(clock=clock)
    store = engine.store
    start_reply = store.start_reply
    asked = asyncio.Event()
    release = asyncio.Event()

    async def slow_start_reply(*args: Any, **kwargs: Any) -> int:
        asked.set()
        await release.wait()
        return await start_reply(*args, **kwargs)

    monkeypatch.setattr(store, "start_reply", slow_start_reply)
    gate, reply, surface = await started(engine, llm, ["A", "B", "C"])
    await until(asked.is_set, "the first render's row asked of the store")
    gate.release()
    await until(lambda: surface.renders[-1][0] == "AB", "the second render, the row not written yet")
    assert await assistant_rows(engine) == []

    release.set()
    refs = refs_of(surface)
    await rows_become(engine, [("A", "streaming", refs)])  # the row, as of the first render
    await clock.advance(CHECKPOINT_SECONDS)
    await rows_become(engine, [("AB", "streaming", refs)])  # what a crash now keeps: all it showed
    gate.release()
    assert await reply == "ok"
    assert surface.final == "ABC"
    assert await assistant_rows(engine) == [("ABC", "ok", refs_of(surface))]


async def test_a_reply_that_ends_before_its_row_is_written_is_stored_once(
    make_engine: Callable[..., Any], llm: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await make_engine()
    store = engine.store
    start_reply = store.start_reply
    release = asyncio.Event()

    async def slow_start_reply(*args: Any, **kwargs: Any) -> int:
        await release.wait()
        return await start_reply(*args, **kwargs)

    monkeypatch.setattr(store, "start_reply", slow_start_reply)
    gate, reply, surface = await started(engine, llm, ["A", "B"])
    gate.release()
    await until(lambda: bool(surface.renders) and surface.renders[-1] == ("AB", True), "the final render")
    assert not reply.done()  # its final record waits for the row
    release.set()
    assert await reply == "ok"
    assert await assistant_rows(engine) == [("AB", "ok", refs_of(surface))]


async def test_a_row_the_store_refused_is_written_at_the_next_render(
    make_engine: Callable[..., Any],
    llm: LLMServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = await make_engine()
    store = engine.store
    start_reply = store.start_reply
    calls: list[str] = []

    async def refused_once(*args: Any, **kwargs: Any) -> int:
        calls.append(args[3].content)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return await start_reply(*args, **kwargs)

    monkeypatch.setattr(store, "start_reply", refused_once)
    gate, reply, surface = await started(engine, llm, ["A", "B", "C"])
    await until(lambda: "could not record where the reply" in caplog.text, "the refusal, logged")
    gate.release()
    await until(lambda: len(calls) == 2, "the row asked again at the next render")
    gate.release()
    assert await reply == "ok"
    assert calls == ["A", "AB"]
    assert await assistant_rows(engine) == [("ABC", "ok", refs_of(surface))]


async def usage_of(engine: Any) -> list[tuple[int, str, int, int]]:
    sql = "SELECT inbox_id, name, prompt_tokens, completion_tokens FROM usage ORDER BY id"
    return await engine.store.read(lambda conn: [tuple(row) for row in conn.exec_driver_sql(sql)])


async def inbox_states(engine: Any) -> list[tuple[int, str]]:
    sql = "SELECT id, state FROM inbox ORDER BY id"
    return await engine.store.read(lambda conn: [tuple(row) for row in conn.exec_driver_sql(sql)])


async def test_a_reply_records_its_usage_in_its_final_records_transaction(
    make_engine: Callable[..., Any], llm: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One store write ends a reply: its final record, its message closed and what it spent."""
    engine = await make_engine()
    alone: list[object] = []

    async def recorded_alone(rows: Any) -> None:
        alone.append(rows)

    monkeypatch.setattr(engine.store, "record_usage", recorded_alone)
    llm.enqueue(Script(tokens=["Hi"], usage=(40, 7)))
    assert await ask(engine, "hello") == "Hi"
    [(inbox_id, state)] = await inbox_states(engine)
    assert state == "done"
    assert await usage_of(engine) == [(inbox_id, "openrouter/xiaomi/mimo-v2-flash", 40, 7)]
    assert alone == []


async def test_a_reply_whose_final_record_fails_still_records_its_usage(
    make_engine: Callable[..., Any],
    llm: LLMServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The final record's transaction rolled back takes the usage rows with it: they are written on
    their own, so what a reply spent is counted even then."""
    engine = await make_engine()

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("UPDATE turns", {}, sqlite3.OperationalError("disk I/O error"))

    monkeypatch.setattr(engine.store, "finish_reply", refused)
    llm.enqueue(Script(tokens=["Hi"], usage=(40, 7)))
    assert await ask(engine, "hello") == "Hi"
    assert "could not save the reply" in caplog.text
    [(inbox_id, state)] = await inbox_states(engine)
    assert state == "pending"  # answered again after a restart, as after a crash
    assert await usage_of(engine) == [(inbox_id, "openrouter/xiaomi/mimo-v2-flash", 40, 7)]
