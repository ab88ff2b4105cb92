"""Several instances on one PostgreSQL: heartbeats, the leader, taking over a dead instance's work, one
person's messages in order across instances, and pruning. Each engine here is an instance of its own
(its own store, connections and instance id) on the test's database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, text

from bot.addressing import Arrival, Rules
from bot.engine import RESTARTED_NOTE, Engine
from bot.leader import KEEP_SECONDS, Leader
from bot.models import ConversationKey
from bot.store import AssistantRecord
from tests.conftest import RecordingPlatform
from tests.support.asking import ADA, CHANNEL, msg, surface_of
from tests.support.heartbeats import silence
from tests.support.llm_server import LLMServer, Script

on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


async def left_streaming(engine: Engine, question: str, shown: str, surface: int) -> int:
    """What an instance leaves when it is killed mid-reply: the question pending, its reply streaming."""
    entry = await engine.store.accept(msg(question), {"message": question}, question, 5)
    assert entry is not None and entry.turn_id is not None
    record = AssistantRecord(shown, "openrouter/xiaomi/mimo-v2-flash", "streaming")
    return await engine.store.start_reply(
        str(CHANNEL), entry.turn_id, ADA.id, record, 4, {"surface": surface}
    )


async def outcome_and_owner(engine: Engine, turn_id: int) -> tuple[str, str]:
    query = text("SELECT outcome, instance FROM turns WHERE id = :id")
    row = await engine.store.read(lambda conn: conn.execute(query, {"id": turn_id}).one())
    return row.outcome, row.instance


@on_postgres
async def test_the_leader_takes_over_only_what_a_dead_instance_left(
    make_engine: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    dead, alive, leading = await make_engine(), await make_engine(), await make_engine()
    dead_reply = await left_streaming(dead, "dead asked", "Half of the dead", 9001)
    await dead.store.accept(msg("dead queued"), {"message": "dead queued"}, "dead queued", 5)
    alive_reply = await left_streaming(alive, "alive asked", "Half alive", 9002)
    await alive.store.accept(msg("alive queued"), {"message": "alive queued"}, "alive queued", 5)
    await silence(dead, leading.settings.instance_timeout_seconds + 1)

    leader = Leader(leading)
    await leader.check()
    assert leader.leading
    await asyncio.gather(*leading._tasks)

    reopened = [(s.id, s.final) for _, _, s in platform.surfaces if s.reopened]
    assert reopened == [(9001, f"Half of the dead\n\n_{RESTARTED_NOTE}_")]  # edited, not posted again
    assert [r.json["messages"][-1]["content"] for r in llm.chat_requests()] == ["Ada: dead queued"]
    assert await outcome_and_owner(leading, dead_reply) == ("interrupted", leading.store.instance_id)
    # The live instance's reply and message are its own, still.
    assert await outcome_and_owner(leading, alive_reply) == ("streaming", alive.store.instance_id)
    assert [e.message.text for e in await leading.store.pending("test")] == ["alive asked", "alive queued"]
    await leader.check()  # a second sweep finds nothing more to take
    assert len(llm.chat_requests()) == 1


@on_postgres
async def test_one_instance_leads_and_another_takes_over_when_it_dies(
    make_engine: Callable[..., Any],
) -> None:
    first, second = await make_engine(), await make_engine()
    events: list[str] = []

    def leader_of(engine: Engine, name: str) -> Leader:
        leader = Leader(engine)

        async def start() -> None:
            events.append(f"{name} started")

        async def stop() -> None:
            events.append(f"{name} stopped")

        leader.add_role(start, stop)
        return leader

    one, two = leader_of(first, "one"), leader_of(second, "two")
    await one.check()
    await two.check()
    assert (one.leading, two.leading) == (True, False)
    # The leader's connection dies with its process; the server ends the session and frees the lock.
    end = text(
        "SELECT pg_terminate_backend(pid) FROM pg_locks "
        "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
    )
    assert await second.store.write(lambda conn: conn.execute(end).all())
    for _ in range(100):  # the server ends the session a moment later; the next checks find it free
        await two.check()
        if two.leading:
            break
        await asyncio.sleep(0.05)
    await one.check()
    assert (one.leading, two.leading) == (False, True)
    assert events == ["one started", "two started", "one stopped"]


@on_postgres
async def test_one_persons_messages_are_answered_in_order_across_instances(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    """Ada's first message reaches one instance, her second another: the second is answered after the
    first, from a context that holds the first answer."""
    first_instance, second_instance = await make_engine(), await make_engine()
    llm.enqueue(Script(tokens=["first", " answer"], first_delay=0.5))
    one, two = msg("one"), msg("two")
    answering_one = await first_instance.accept(one, {"message": one.id})
    answering_two = await second_instance.accept(two, {"message": two.id})
    assert answering_one and answering_two
    assert await answering_two == "ok"
    assert answering_one.done()
    requests = [r.json["messages"] for r in llm.chat_requests()]
    assert [m[-1]["content"] for m in requests] == ["Ada: one", "Ada: two"]
    assert "first answer" in [m["content"] for m in requests[1]]
    assert surface_of(first_instance, one).final == "first answer"


@on_postgres
async def test_a_message_whose_cut_reply_is_being_repaired_is_not_taken_to_answer_again(
    make_engine: Callable[..., Any],
) -> None:
    """Two instances recover at once (a restarted one and the leader): one has taken the dead
    instance's half-shown reply to repair it, which answers its message; the other must not take that
    message to answer it a second time."""
    dead, repairing, sweeping = await make_engine(), await make_engine(), await make_engine()
    await left_streaming(dead, "story", "Once upon", 9001)
    await silence(dead, repairing.settings.instance_timeout_seconds + 1)
    timeout = repairing.settings.instance_timeout_seconds
    assert [r.content for r in await repairing.store.claim_streaming("test", timeout)] == ["Once upon"]
    assert await sweeping.store.claim_pending("test", timeout) == []


@on_postgres
async def test_a_message_taken_over_from_a_dead_instance_goes_before_the_persons_later_ones(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    """Ada's first message was accepted by an instance that died; her second, here, waits for it. The
    first, taken over here after the second began waiting, gets its turn: neither waits for the other
    for ever."""
    dead, alive = await make_engine(), await make_engine()
    await dead.store.accept(msg("one"), {"message": "one"}, "one", 3)
    two = msg("two")
    answering_two = await alive.accept(two, {"message": two.id})
    assert answering_two is not None
    await silence(dead, alive.settings.instance_timeout_seconds + 1)
    await alive.recover("test")
    assert await asyncio.wait_for(answering_two, 20) == "ok"
    await asyncio.gather(*alive._tasks)
    assert [r.json["messages"][-1]["content"] for r in llm.chat_requests()] == ["Ada: one", "Ada: two"]


@pytest.mark.both_databases
async def test_answered_inbox_rows_and_dead_instances_are_pruned_after_seven_days(
    make_engine: Callable[..., Any],
) -> None:
    engine = await make_engine()
    store = engine.store
    entries = [await store.accept(msg(t), None, t, 1) for t in ("old", "recent", "waiting")]
    assert all(entries)
    old_entry, recent_entry, _waiting = (e for e in entries if e is not None)
    await store.close_inbox(old_entry.id)
    await store.close_inbox(recent_entry.id)
    week_ago = time.time() - KEEP_SECONDS - 60

    def long_ago(conn: Connection) -> None:
        conn.execute(
            text("UPDATE inbox SET done_at = :t WHERE id = :id"), {"t": week_ago, "id": old_entry.id}
        )
        conn.execute(
            text(
                "INSERT INTO instances (id, host, pid, started_at, heartbeat_at) "
                "VALUES ('gone', 'h', 1, 0, :t)"
            ),
            {"t": week_ago},
        )

    await store.write(long_ago)
    assert await store.prune(KEEP_SECONDS) == 2
    kept = await store.read(
        lambda conn: conn.execute(text("SELECT text FROM inbox ORDER BY id")).scalars().all()
    )
    instances = await store.read(lambda conn: conn.execute(text("SELECT id FROM instances")).scalars().all())
    assert kept == ["recent", "waiting"]
    assert instances == [store.instance_id]


@pytest.mark.both_databases
async def test_threads_untouched_for_seven_days_are_no_longer_followed(
    make_engine: Callable[..., Any],
) -> None:
    engine = await make_engine()
    rules = Rules(thread_followups=True)
    quiet, busy = ConversationKey("test", "general", "t1"), ConversationKey("test", "general", "t2")
    for thread in (quiet, busy):
        assert await engine.addressing.reason(Arrival(thread, mentions_parley=True), rules) == "mention"
    await engine.store.set_meta("discord:commands-hash", "abc")  # not a thread mark: kept
    long_ago = text("UPDATE meta SET updated_at = :t").bindparams(t=time.time() - KEEP_SECONDS - 60)
    await engine.store.write(lambda conn: conn.execute(long_ago))
    assert await engine.addressing.reason(Arrival(busy), rules) == "thread"  # touched again today
    await Leader(engine).check()
    assert await engine.addressing.reason(Arrival(quiet), rules) is None
    assert await engine.addressing.reason(Arrival(busy), rules) == "thread"
    assert await engine.store.get_meta("discord:commands-hash") == "abc"
    # A mention follows the forgotten thread again.
    assert await engine.addressing.reason(Arrival(quiet, mentions_parley=True), rules) == "mention"
    assert await engine.addressing.reason(Arrival(quiet), rules) == "thread"


@on_postgres
async def test_a_lost_lock_connection_is_replaced_and_replies_go_on(
    engine: Engine, llm: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    first = msg("before")
    task = await engine.accept(first, {"message": first.id})
    assert task and await task == "ok"
    locks_session = text(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_advisory_unlock%' AND pid <> pg_backend_pid()"
    )

    def end_it(conn: Connection) -> int:  # the server ends the session holding the locks
        holder = int(conn.execute(locks_session).scalar_one())
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": holder})
        return holder

    holder = await engine.store.write(end_it)
    alive = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
    # A transaction sees one snapshot of pg_stat_activity: look in a new one each time.
    while await engine.store.read(lambda conn: conn.execute(alive, {"pid": holder}).scalar()):
        await asyncio.sleep(0.02)
    second = msg("after")
    task = await engine.accept(second, {"message": second.id})
    assert task and await task == "ok"
    assert surface_of(engine, second).final == "echo: Ada: after"
    assert "lost the connection that holds conversation locks" in caplog.text
