"""The durable inbox: stored on arrival, answered once, and after a crash finished where the last process
stopped (the crash itself is simulated by leaving the store as a killed process leaves it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext

from bot.engine import Engine
from bot.models import Author
from bot.store import AssistantRecord
from tests.conftest import RecordingPlatform
from tests.support.asking import ADA, CHANNEL, answer, first_render, msg, surface_of
from tests.support.llm_server import LLMServer, Script

pytestmark = pytest.mark.both_databases


async def test_a_message_delivered_twice_is_answered_once(engine: Engine, llm: LLMServer) -> None:
    message = msg("hello")
    await answer(engine, message)
    assert await engine.accept(message, {"message": message.id}) is None
    assert len(llm.chat_requests()) == 1
    assert await engine.store.count_turns(str(CHANNEL)) == 2


async def test_one_delivery_accepted_by_two_instances_at_once_is_stored_and_answered_once(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    """Both race to store it: one stores it and answers, the other is told it was seen, and neither
    gets a database error (the dedupe is INSERT … ON CONFLICT DO NOTHING, not a caught IntegrityError)."""
    first, second = await make_engine(), await make_engine()
    errors: list[BaseException] = []

    def failed(context: ExceptionContext) -> None:
        errors.append(context.original_exception)

    event.listen(DatabaseEngine, "handle_error", failed)  # every engine's, whichever the store runs on
    message = msg("hello")
    try:
        accepted = await asyncio.gather(
            *(e.accept(message, {"message": message.id}) for e in (first, second))
        )
    finally:
        event.remove(DatabaseEngine, "handle_error", failed)
    tasks = [task for task in accepted if task is not None]
    assert len(tasks) == 1 and await tasks[0] == "ok"
    assert await second.accept(message, {"message": message.id}) is None  # and seen later, too
    assert errors == []
    assert len(llm.chat_requests()) == 1
    turns, _ = await first.store.recall(str(CHANNEL), 10_000)
    assert [(t.role, t.content) for t in turns] == [("user", "hello"), ("assistant", "echo: Ada: hello")]


async def test_a_redelivery_after_a_restart_is_not_answered_again(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    message = msg("hello")
    first = await make_engine()
    await answer(first, message)
    await first.aclose()
    second = await make_engine()
    assert await second.accept(message, {"message": message.id}) is None
    assert len(llm.chat_requests()) == 1


async def test_a_message_is_stored_before_it_waits_for_its_turn(engine: Engine, llm: LLMServer) -> None:
    """Ada's second message waits behind her first reply, but it is in memory and in the inbox at once."""
    llm.enqueue(Script(tokens=["slow"], first_delay=0.5))
    first, second = msg("one"), msg("two")
    running = await engine.accept(first, {"message": first.id})
    waiting = await engine.accept(second, {"message": second.id})
    assert running and waiting and not waiting.done()
    turns, _ = await engine.store.recall(str(CHANNEL), 10_000)
    assert [t.content for t in turns] == ["one", "two"]
    assert [entry.message.text for entry in await engine.store.pending("test")] == ["one", "two"]
    await asyncio.gather(running, waiting)
    assert await engine.store.pending("test") == []


async def test_after_a_crash_cut_replies_are_repaired_and_waiting_messages_answered(
    make_engine: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    """What a killed process leaves: a reply half shown (its row streaming, with where it shows), a
    message whose reply never showed, one that never started, and one too old to answer now."""
    crashed = await make_engine()
    store = crashed.store
    cut = await store.accept(msg("long question"), {"message": "cut"}, "long question", 5)
    unseen = await store.accept(msg("quick one"), {"message": "unseen"}, "quick one", 5)
    queued = await store.accept(msg("queued", author=ADA), {"message": "queued"}, "queued", 5)
    old = await store.accept(msg("ancient"), {"message": "old"}, "ancient", 5)
    assert cut and unseen and queued and old and cut.turn_id and unseen.turn_id
    record = AssistantRecord("The answer so", "openrouter/xiaomi/mimo-v2-flash", "streaming")
    shown = await store.start_reply(str(CHANNEL), cut.turn_id, ADA.id, record, 4, {"surface": 9001})
    await store.start_reply(str(CHANNEL), unseen.turn_id, ADA.id, AssistantRecord("", "m", "streaming"), 0)
    long_ago = f"UPDATE inbox SET received_at = {time.time() - 3600} WHERE id = {old.id}"
    await store.write(lambda conn: conn.exec_driver_sql(long_ago))  # it arrived long before the restart
    await crashed.aclose()

    restarted = await make_engine(pending_max_age_seconds=600)
    await restarted.recover("test")
    await asyncio.gather(*restarted._tasks)

    reopened = [s for _, _, s in platform.surfaces if s.reopened]
    assert [(s.id, s.final) for s in reopened] == [
        (9001, "The answer so\n\n_Cut off: Parley restarted before this reply was finished._")
    ]
    answered = [r.json["messages"][-1]["content"] for r in llm.chat_requests()]
    assert answered == ["Ada: quick one", "Ada: queued"]  # the cut reply is not asked again
    by_message = {reply_to["message"]: s for _, reply_to, s in platform.surfaces if reply_to}
    assert by_message["unseen"].final.startswith("echo: ")
    assert by_message["old"].final == (
        "_Parley was offline and did not answer Ada within 10 minutes; ask again._"
    )
    assert await restarted.store.pending("test") == []
    turns, _ = await restarted.store.recall(str(CHANNEL), 10_000)
    assert (shown, "interrupted") in [(t.id, t.outcome) for t in turns]
    assert [t.content for t in turns if t.role == "assistant"] == [
        "The answer so",
        "echo: Ada: quick one",
        "echo: Ada: queued",
    ]


async def test_shutdown_lets_replies_finish_within_the_grace_then_cuts_them_off(
    engine: Engine, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["never", " ends"], stall_after=1))
    slow, quick = msg("slow", author=Author("u-bo", "Bo")), msg("quick")
    slow_task = await engine.accept(slow, {"message": slow.id})
    await first_render(engine, slow)
    llm.enqueue(Script(tokens=["quick"], first_delay=0.2))
    quick_task = await engine.accept(quick, {"message": quick.id})
    while len(llm.chat_requests()) < 2:
        await asyncio.sleep(0.01)
    assert quick_task and slow_task and not quick_task.done()
    await engine.drain(grace=0.5)
    assert surface_of(engine, quick).final == "quick"
    assert surface_of(engine, slow).final == "never\n\n_Cut off: Parley is restarting._"
    assert await engine.store.pending("test") == []


async def test_a_reply_records_where_it_shows_at_its_first_render(engine: Engine, llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=["part", " two"], stall_after=1))
    message = msg("go")
    task = await engine.accept(message, {"message": message.id})
    assert task is not None
    (streaming,) = await _streaming_when_shown(engine)
    assert streaming.refs == surface_of(engine, message).refs and streaming.content == "part"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _streaming_when_shown(engine: Engine) -> list[Any]:
    while not (found := await engine.store.streaming("test")):
        await asyncio.sleep(0.01)
    return found


async def test_recovery_leaves_alone_what_this_process_is_answering(engine: Engine, llm: LLMServer) -> None:
    """Messages arrive as soon as a platform starts, before recovery runs: they are this process's own,
    neither answered a second time nor repaired as if a crash had cut them."""
    llm.enqueue(Script(tokens=["still", " going"], delay=0.2))
    message = msg("long one")
    task = await engine.accept(message, {"message": message.id})
    assert task is not None
    await first_render(engine, message)
    await engine.recover("test")
    assert await task == "ok"
    assert len(llm.chat_requests()) == 1
    assert not [s for _, _, s in engine.platforms["test"].surfaces if s.reopened]
    assert surface_of(engine, message).final == "still going"


async def test_a_message_arriving_while_parley_stops_waits_stored_for_the_next_start(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    stopping = await make_engine()
    await stopping.drain(grace=0.1)
    late = msg("just in time?")
    assert await stopping.accept(late, {"message": late.id}) is None
    assert llm.chat_requests() == []
    await stopping.aclose()
    restarted = await make_engine()
    await restarted.recover("test")
    await asyncio.gather(*restarted._tasks)
    assert surface_of(restarted, late).final == "echo: Ada: just in time?"
