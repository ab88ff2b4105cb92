"""Durable memory, settings and the inbox, on SQLite and PostgreSQL: what survives a restart, what fits,
what dedupes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError, ResourceClosedError

from bot.accounting import Ledger
from bot.models import Attachment, Author, ConversationKey, Message
from bot.providers.base import Usage
from bot.schema import instances, meta
from bot.store import AssistantRecord, Checkpoint, InboxEntry, Store, settings_of, skill_modes_of

ADA = Author("u1", "Ada", is_channel_manager=True, role_ids=("r1",))
BO = Author("u2", "Bo")


pytestmark = pytest.mark.both_databases


@pytest.fixture
def db_url(tmp_path: Path, database_url: str) -> str:
    if database_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp_path}/nested/dir/parley.db"  # folders are made as needed
    return database_url


def message(text: str, message_id: str, key: str = "c", author: Author = ADA, **extra: object) -> Message:
    return Message(ConversationKey("test", key), author, text, id=message_id, **extra)  # type: ignore[arg-type]


async def asked(store: Store, text: str, message_id: str, key: str = "c", author: Author = ADA) -> InboxEntry:
    entry = await store.accept(message(text, message_id, key, author), None, text, 10)
    assert entry is not None and entry.turn_id is not None
    return entry


async def remember(store: Store, text: str, message_id: str, key: str = "c", author: Author = ADA) -> int:
    turn_id = (await asked(store, text, message_id, key, author)).turn_id
    assert turn_id is not None
    return turn_id


async def test_turns_and_settings_survive_a_restart(db_url: str) -> None:
    store = await Store.open(db_url)
    entry = await asked(store, "remember the number 42", "m1")
    question = entry.turn_id
    assert question is not None
    reply = await store.start_reply(
        "test:c", question, "u1", AssistantRecord("I", "openrouter/x", "streaming"), 1
    )
    await store.finish_reply(
        entry.id, "test:c", reply, question, "u1", AssistantRecord("I will.", "openrouter/x", "ok"), 5
    )
    await store.set_setting("test:c", "model", "openai/gpt-4o", "u1")
    await store.close()

    reopened = await Store.open(db_url)
    turns, trimmed = await reopened.recall("test:c", 1000)
    assert [(t.role, t.author_name, t.content) for t in turns] == [
        ("user", "Ada", "remember the number 42"),
        ("assistant", "", "I will."),
    ]
    assert not trimmed
    (settings,) = await reopened.read(partial(settings_of, conversations=["test:c"]))
    assert settings["model"] == "openai/gpt-4o"
    await reopened.close()


async def test_recall_keeps_the_newest_that_fit_and_says_so(db_url: str) -> None:
    store = await Store.open(db_url)
    for index in range(200):  # more than one page
        await remember(store, f"turn {index}", f"m{index}")
    await remember(store, "not mine", "x", key="other")
    turns, trimmed = await store.recall("test:c", 95)
    assert [t.content for t in turns] == [f"turn {i}" for i in range(191, 200)]
    assert trimmed
    everything, trimmed_all = await store.recall("test:c", 10_000)
    assert len(everything) == 200 and not trimmed_all
    await store.close()


async def test_recall_up_to_a_question_reads_the_conversation_as_it_stood(db_url: str) -> None:
    """Ada and Bo ask at once; Ada's answer lands after Bo's question but is read back after her own."""
    store = await Store.open(db_url)
    ada_asked, bo_asked = await asked(store, "Ada asks", "m1"), await asked(store, "Bo asks", "m2", author=BO)
    ada, bo = ada_asked.turn_id, bo_asked.turn_id
    assert ada is not None and bo is not None
    ada_reply = await store.start_reply("test:c", ada, "u1", AssistantRecord("to Ada", "m", "streaming"), 2)
    bo_reply = await store.start_reply("test:c", bo, "u2", AssistantRecord("to B", "m", "streaming"), 2)
    later = await remember(store, "Ada again", "m3")
    # While both stream, neither answer is part of any context.
    turns, _ = await store.recall("test:c", 1000, upto=later)
    assert [t.content for t in turns] == ["Ada asks", "Bo asks", "Ada again"]
    await store.finish_reply(
        ada_asked.id, "test:c", ada_reply, ada, "u1", AssistantRecord("to Ada", "m", "ok"), 2
    )
    await store.finish_reply(
        bo_asked.id, "test:c", bo_reply, bo, "u2", AssistantRecord("to Bo", "m", "ok"), 2
    )
    turns, _ = await store.recall("test:c", 1000, upto=later)
    assert [t.content for t in turns] == ["Ada asks", "to Ada", "Bo asks", "to Bo", "Ada again"]
    # Bo's context is his question and what came before it: not Ada's later question.
    turns, _ = await store.recall("test:c", 1000, upto=bo)
    assert [t.content for t in turns] == ["Ada asks", "to Ada", "Bo asks"]
    await store.close()


async def test_forget_only_clears_one_conversation(db_url: str) -> None:
    store = await Store.open(db_url)
    await remember(store, "a", "1", key="c1")
    await remember(store, "b", "2", key="c1")
    await remember(store, "c", "3", key="c2")
    assert await store.forget("test:c1") == 2
    assert await store.count_turns("test:c1") == 0
    assert await store.count_turns("test:c2") == 1
    await store.close()


async def test_an_accepted_message_is_stored_once_with_its_files_across_restarts(db_url: str) -> None:
    store = await Store.open(db_url)
    files = (
        Attachment("notes.txt", "text/plain", 5, data=b"hello"),
        Attachment("big.bin", None, 10**9, unavailable_reason="it is too large"),
    )
    incoming = message("look", "m1", attachments=files, is_direct=True)
    first = await store.accept(incoming, {"channel": 5, "message": 7}, "look", 4)
    assert first is not None
    assert await store.accept(incoming, None, "look", 4) is None  # the same delivery again
    await store.close()

    reopened = await Store.open(db_url)
    assert await reopened.accept(incoming, None, "look", 4) is None  # also after a restart
    (pending,) = await reopened.pending("test")
    assert pending.id == first.id and pending.turn_id == first.turn_id
    assert pending.reply_to == {"channel": 5, "message": 7}
    assert pending.message.key == incoming.key and pending.message.author == ADA
    assert pending.message.text == "look" and pending.message.is_direct
    assert pending.message.attachments == files
    assert await reopened.count_turns("test:c") == 1
    await reopened.close_inbox(pending.id)
    assert await reopened.pending("test") == []
    files_left = "SELECT count(*) FROM inbox_files"  # files were kept only to answer the message
    assert await reopened.read(lambda conn: conn.exec_driver_sql(files_left).scalar()) == 0
    await reopened.close()


async def test_pending_is_per_platform_oldest_first_and_commands_keep_no_turn(db_url: str) -> None:
    store = await Store.open(db_url)
    await store.accept(message("first", "1"), None, "first", 3)
    command = await store.accept(message("/model", "2"), None, "", 0)
    other = Message(ConversationKey("elsewhere", "c"), ADA, "not here", id="1")
    await store.accept(other, None, "not here", 3)
    assert command is not None and command.turn_id is None
    assert [entry.message.text for entry in await store.pending("test")] == ["first", "/model"]
    assert [entry.message.text for entry in await store.pending("elsewhere")] == ["not here"]
    await store.close()


async def test_a_reply_cut_short_by_a_crash_is_found_and_its_question_closed(db_url: str) -> None:
    store = await Store.open(db_url)
    entry = await store.accept(message("question", "m1"), None, "question", 3)
    assert entry is not None and entry.turn_id is not None
    turn = await store.start_reply(
        "test:c", entry.turn_id, "u1", AssistantRecord("half", "m", "streaming"), 3
    )
    await store.save_refs(turn, {"messages": [11]})
    await store.close()  # the process dies here, mid-reply

    reopened = await Store.open(db_url)
    (streaming,) = await reopened.streaming("test")
    assert (streaming.turn_id, streaming.content, streaming.refs) == (turn, "half", {"messages": [11]})
    assert await reopened.streaming("elsewhere") == []
    await reopened.interrupted(streaming)
    assert await reopened.streaming("test") == []
    assert await reopened.pending("test") == []
    turns, _ = await reopened.recall("test:c", 100)
    assert [(t.content, t.outcome) for t in turns] == [("question", None), ("half", "interrupted")]
    await reopened.close()


async def test_meta_values_setting_updates_and_skill_modes(db_url: str) -> None:
    store = await Store.open(db_url)
    assert await store.get_meta("hash") is None
    await asyncio.gather(*(store.set_meta("hash", f"v{index}") for index in range(5)))  # racing writers
    await store.set_meta("hash", "two")
    assert await store.get_meta("hash") == "two"
    await store.set_setting("c", "model", "a/b", "u")
    await store.set_setting("c", "model", None, "u")
    assert (await store.read(partial(settings_of, conversations=["c"])))[0]["model"] is None
    with pytest.raises(ValueError):
        await store.set_setting("c", "password", "x", "u")
    await store.set_skill_mode("c", "web_search", "on", "u")
    await store.set_skill_mode("c", "web_search", "auto", "u")
    await store.set_skill_mode("c:t", "read_page", "off", "u")
    modes = partial(skill_modes_of, conversations=["c:t", "c", "none"])
    assert await store.read(modes) == [{"read_page": "off"}, {"web_search": "auto"}, {}]
    await store.close()


async def test_a_features_own_transaction_commits_whole_or_not_at_all(db_url: str) -> None:
    def add(name: str, fail: bool) -> Callable[[Connection], int]:
        def work(conn: Connection) -> int:
            conn.execute(insert(meta).values(name=name, value="1"))
            if fail:
                raise RuntimeError("half way")
            return 7

        return work

    def names(conn: Connection) -> list[str]:
        return sorted(conn.execute(select(meta.c.name).where(meta.c.name.like("feature-%"))).scalars())

    store = await Store.open(db_url)
    assert await store.write(add("feature-kept", fail=False)) == 7
    with pytest.raises(RuntimeError):
        await store.write(add("feature-dropped", fail=True))
    assert await store.read(names) == ["feature-kept"]
    await store.close()


async def test_a_transaction_the_database_refuses_rolls_back_and_the_next_goes_on(db_url: str) -> None:
    """A statement refused half way through leaves nothing of the transaction, and the one connection
    that writes (on SQLite) goes on with the next."""
    store = await Store.open(db_url)

    def half(conn: Connection) -> None:
        conn.execute(insert(meta).values(name="written first", value="1"))
        conn.execute(insert(meta).values(name="refused", value=None))  # value is NOT NULL

    with pytest.raises(IntegrityError):
        await store.write(half)
    assert await store.get_meta("written first") is None
    await store.set_meta("written next", "2")
    assert await store.get_meta("written next") == "2"
    await store.close()


async def test_closing_twice_does_nothing_and_a_closed_store_says_so(db_url: str) -> None:
    store = await Store.open(db_url)
    await store.close()
    await store.close()
    with pytest.raises(ResourceClosedError):
        await store.get_meta("anything")
    reopened = await Store.open(db_url)  # the instance left the table when it closed
    assert await reopened.read(lambda conn: conn.execute(select(instances.c.id)).scalars().all()) == [
        reopened.instance_id
    ]
    await reopened.close()


async def test_the_sweep_for_streaming_replies_reads_their_partial_index(db_url: str) -> None:
    store = await Store.open(db_url)
    sweep = "SELECT id FROM turns WHERE outcome = 'streaming' AND conversation LIKE 'test:%' ORDER BY id"

    def plan(conn: Connection) -> str:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a table this small would be scanned
            return "\n".join(conn.exec_driver_sql(f"EXPLAIN {sweep}").scalars())
        return "\n".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sweep}"))

    shown = await store.read(plan)
    await store.close()
    assert "ix_turns_streaming" in shown, shown


async def test_many_replies_written_at_once_all_succeed_and_none_is_mixed_up(db_url: str) -> None:
    """Concurrent replies once raced for SQLite's one write lock and failed with "database is locked"."""
    store = await Store.open(db_url)

    async def reply(index: int) -> None:
        incoming = message(f"question {index}", f"m{index}", key=f"c{index % 7}")
        entry = await store.accept(incoming, None, incoming.text, 3)
        assert entry is not None
        conversation = str(incoming.key)
        record = AssistantRecord("", "m", "streaming")
        turn = await store.start_reply(conversation, entry.turn_id, ADA.id, record, 0, {"r": index})
        await store.save_checkpoints([Checkpoint(turn, f"answer {index} so", "m", 2)])
        final = AssistantRecord(f"answer {index}", "m", "ok")
        await store.finish_reply(entry.id, conversation, turn, entry.turn_id, ADA.id, final, 2)

    await asyncio.gather(*(reply(i) for i in range(300)))
    assert await store.pending("test") == []
    assert await store.streaming("test") == []
    answers = [t.content for c in range(7) for t in (await store.recall(f"test:c{c}", 100_000))[0]]
    assert sorted(answers) == sorted(
        [f"question {i}" for i in range(300)] + [f"answer {i}" for i in range(300)]
    )
    await store.close()


async def test_a_checkpoint_saves_only_replies_still_streaming(db_url: str) -> None:
    store = await Store.open(db_url)
    done = await store.accept(message("q1", "m1"), None, "q1", 1)
    going = await store.accept(message("q2", "m2"), None, "q2", 1)
    assert done is not None and going is not None
    streaming = AssistantRecord("", "m", "streaming")
    finished = await store.start_reply("test:c", done.turn_id, ADA.id, streaming, 0)
    still = await store.start_reply("test:c", going.turn_id, ADA.id, streaming, 0)
    await store.finish_reply(
        done.id, "test:c", finished, done.turn_id, ADA.id, AssistantRecord("done", "m", "ok"), 1
    )
    # A batch that was under way when the first reply finished.
    await store.save_checkpoints([Checkpoint(finished, "do", "m2", 1), Checkpoint(still, "so far", "m2", 2)])
    await store.save_checkpoints([])
    assert [(r.turn_id, r.content) for r in await store.streaming("test")] == [(still, "so far")]
    turns, _ = await store.recall("test:c", 1000, upto=going.turn_id)
    assert [(t.content, t.outcome) for t in turns] == [("q1", None), ("done", "ok"), ("q2", None)]
    await store.close()


async def test_an_sqlite_database_in_memory_reads_what_it_wrote_on_its_one_connection() -> None:
    store = await Store.open("sqlite+aiosqlite:///:memory:")  # a second connection would see nothing
    question = await remember(store, "kept in memory", "m1")
    turns, _ = await store.recall("test:c", 100)
    assert [t.id for t in turns] == [question]
    assert [e.turn_id for e in await store.pending("test")] == [question]
    await store.close()
    await store.close()


def usage_rows(entry: InboxEntry) -> list[dict[str, object]]:
    """What the engine records for a reply to `entry` that made one model call."""
    ledger = Ledger()
    ledger.add("openrouter/x", Usage(12, 3))
    return ledger.rows(entry.message, entry.id, 1.0)


async def test_a_final_record_and_its_usage_rows_are_one_transaction(db_url: str) -> None:
    """Usage rows go in with the final record: both are kept, or (a row the database refuses) neither,
    and the message stays pending with its reply still streaming, to be repaired like after a crash."""
    store = await Store.open(db_url)
    kept, refused = await asked(store, "q1", "m1"), await asked(store, "q2", "m2")
    streaming = AssistantRecord("", "openrouter/x", "streaming")
    first = await store.start_reply("test:c", kept.turn_id, ADA.id, streaming, 0)
    second = await store.start_reply("test:c", refused.turn_id, ADA.id, streaming, 0)
    final = AssistantRecord("done", "openrouter/x", "ok", 12, 3)
    await store.finish_reply(kept.id, "test:c", first, kept.turn_id, ADA.id, final, 1, usage_rows(kept))
    nobody = [{**row, "person": None} for row in usage_rows(refused)]
    with pytest.raises(IntegrityError):  # a usage row without the person it is for
        await store.finish_reply(refused.id, "test:c", second, refused.turn_id, ADA.id, final, 1, nobody)
    assert [entry.id for entry in await store.pending("test")] == [refused.id]
    assert [reply.turn_id for reply in await store.streaming("test")] == [second]
    report = await store.usage_report("model", "name", 0.0)
    assert [(row["key"], row["replies"], row["prompt_tokens"]) for row in report] == [("openrouter/x", 1, 12)]
    await store.close()


async def test_budgets_set_are_read_by_scope_and_target_alike(db_url: str) -> None:
    """A channel and a server may share an id: each pair asked for finds its own budget only."""
    store = await Store.open(db_url)
    await store.set_budget("channel", "test:T1", "daily", "usd", 1.0, "u1")
    await store.set_budget("server", "test:T1", "daily", "usd", 2.0, "u1")
    await store.set_budget("server", "test:T2", "monthly", "tokens", 3.0, "u1")
    found = await store.budget_overrides([("channel", "test:T1"), ("server", "test:T2")])
    assert sorted((row["scope"], row["target"], row["amount"]) for row in found) == [
        ("channel", "test:T1", 1.0),
        ("server", "test:T2", 3.0),
    ]
    await store.close()
