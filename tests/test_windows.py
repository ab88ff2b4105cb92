"""Each conversation's window held in memory (bot/windows.py): every request the provider receives is byte
for byte the one a reply reading every turn from the store sends, whatever changed memory in between, on
SQLite and PostgreSQL, with one instance or two answering the conversation in turn."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select, update

from bot.config import ProviderSettings
from bot.engine import Engine
from bot.models import Author, ConversationKey, Message
from bot.schema import turn_changes, turns
from bot.store import AssistantRecord, Checkpoint
from bot.summaries import HEADING
from bot.windows import Windows
from tests.support.asking import ADA, answer, msg
from tests.support.llm_server import LLMServer

pytestmark = pytest.mark.both_databases

BO = Author("u-bo", "Bo")
MANAGER = Author("u-max", "Max", is_channel_manager=True)
HELD = ConversationKey("test", "held")  # answered from memory
READ = ConversationKey("test", "read")  # the same steps, every turn read from the store
PADDING = " and some more words to fill the window" * 6


@dataclass
class Side:
    """One conversation run by the engines that answer it (in turn), and the request bodies of each step."""

    engines: list[Engine]
    key: ConversationKey
    asked: list[Message] = field(default_factory=list)
    bodies: list[list[bytes]] = field(default_factory=list)


async def step(llm: LLMServer, side: Side, what: tuple[Any, ...], turn: int) -> None:
    """Run one step on the side's engine for this turn; keep the bodies the provider received meanwhile."""
    engine = side.engines[turn % len(side.engines)]
    before = len(llm.chat_requests())
    kind, *args = what
    if kind == "say":
        text, author = args
        message = msg(text, side.key, author)
        side.asked.append(message)
        await answer(engine, message)
    elif kind == "edit":  # the n-th message asked here, edited by its author
        index, text = args
        original = side.asked[index]
        task = await engine.controls.edited(
            Message(side.key, original.author, text, id=original.id), f"v{turn}"
        )
        assert task is not None, "the edit was not taken"
        await task
    elif kind == "delete":
        (index,) = args
        await engine.controls.deleted(side.key, side.asked[index].id)
    else:
        raise AssertionError(kind)
    side.bodies.append([request.body for request in llm.chat_requests()[before:]])


def say(text: str, author: Author = ADA) -> tuple[Any, ...]:
    return ("say", text, author)


async def same_requests(llm: LLMServer, held: Side, read: Side, steps: list[tuple[Any, ...]]) -> None:
    for turn, what in enumerate(steps):
        await step(llm, held, what, turn)
        await step(llm, read, what, turn)
        assert held.bodies[-1] == read.bodies[-1], f"step {turn} {what}: the held window sent another request"
    assert sum(len(bodies) for bodies in held.bodies) >= len(steps) // 2  # the steps did ask the model


def conversation(count: int, prefix: str = "note") -> list[tuple[Any, ...]]:
    return [say(f"{prefix} {index}{PADDING}", ADA if index % 3 else BO) for index in range(count)]


SMALL = {"tiny": 1200, "roomy": 3000}


@pytest.fixture
def small_models(llm: LLMServer) -> dict[str, Any]:
    """Windows that a few turns fill: `local/tiny`, and `local/roomy` with more than twice its room."""
    local = ProviderSettings(base_url=llm.openai_base_url, models=list(SMALL), context_length=SMALL)
    llm.echo_usage = None  # no usage reported: the windows stay the size of the models' contexts
    return {"providers": {"local": local}, "default_model": "local/tiny", "summary_wait_seconds": 60}


async def engines(make_engine: Callable[..., Any], **settings: Any) -> tuple[Engine, Engine]:
    return await make_engine(**settings), await make_engine(**settings, context_memory_mb=0)


async def test_appended_turns_are_read_alone_and_the_requests_match(
    make_engine: Callable[..., Any], llm: LLMServer, small_models: dict[str, Any]
) -> None:
    cached, uncached = await engines(make_engine, **small_models)
    await same_requests(llm, Side([cached], HELD), Side([uncached], READ), conversation(14))
    # One full read at the first message; every later one read only what was new, in its look-up.
    assert cached.windows.reads == {"full": 1, "new": 0, "ahead": 13}
    assert uncached.windows.reads == {"full": 0, "new": 0, "ahead": 0}


CHANGES = [
    say("/forget last"),
    say("/regenerate"),
    ("edit", 14, "note fourteen, edited" + PADDING),  # the question before the last, answered again
    ("delete", 16),
    ("delete", 2),  # long out of the window: nothing the model reads changes, but memory did
    say("/model local/roomy", MANAGER),  # more than twice the room: older turns than are held
    say("/reset", MANAGER),
]


async def test_what_changes_memory_reaches_the_held_window(
    make_engine: Callable[..., Any], llm: LLMServer, small_models: dict[str, Any]
) -> None:
    cached, uncached = await engines(make_engine, **small_models)
    held, read = Side([cached], HELD), Side([uncached], READ)
    await same_requests(llm, held, read, conversation(12))
    for index, change in enumerate(CHANGES):
        full = cached.windows.reads["full"]
        await same_requests(llm, held, read, [change, *conversation(2, f"after {index}")])
        assert cached.windows.reads["full"] > full, f"{change}: the window was not read again"


async def test_a_smaller_model_then_the_larger_again(
    make_engine: Callable[..., Any], llm: LLMServer, small_models: dict[str, Any]
) -> None:
    cached, uncached = await engines(make_engine, **{**small_models, "default_model": "local/roomy"})
    steps = [
        *conversation(12),
        say("/model local/tiny", MANAGER),
        *conversation(2, "tiny"),
        say("/model local/roomy", MANAGER),
        *conversation(2, "roomy"),
    ]
    await same_requests(llm, Side([cached], HELD), Side([uncached], READ), steps)


async def test_the_running_summary_reaches_the_model_as_without_the_window(
    make_engine: Callable[..., Any], llm: LLMServer, small_models: dict[str, Any]
) -> None:
    cached, uncached = await engines(make_engine, **small_models)
    held = Side([cached], HELD)
    await same_requests(llm, held, Side([uncached], READ), conversation(16))
    # Summaries were made (their requests were compared too) and sent ahead of the turns.
    assert any(len(bodies) == 2 for bodies in held.bodies)
    assert HEADING.encode() in held.bodies[-1][-1]


async def test_two_instances_answering_one_conversation_in_turn(
    make_engine: Callable[..., Any], llm: LLMServer, small_models: dict[str, Any]
) -> None:
    """Each instance holds its own window; what the other appended, hid or edited between two of its
    replies is in its next request."""
    first = await make_engine(**small_models)
    second = await make_engine(**small_models)
    uncached = await make_engine(**small_models, context_memory_mb=0)
    steps = [
        *conversation(7),
        say("/forget last"),  # on the second instance: the first must see it
        *conversation(3, "then"),
        ("edit", 8, "then zero, edited" + PADDING),
        *conversation(3, "later"),
        say("/reset", MANAGER),
        *conversation(3, "afresh"),
    ]
    await same_requests(llm, Side([first, second], HELD), Side([uncached], READ), steps)
    assert first.windows.reads["ahead"] >= 5 and second.windows.reads["ahead"] >= 5


async def test_a_turn_that_appears_below_the_newest_one_held_is_read(
    make_engine: Callable[..., Any], llm: LLMServer, small_models: dict[str, Any]
) -> None:
    """Ids need not arrive in order (another instance's transaction that committed late): the count of
    inserts tells, and the window is read again."""
    cached, uncached = await engines(make_engine, **small_models)
    held, read = Side([cached], HELD), Side([uncached], READ)
    await same_requests(llm, held, read, conversation(3))

    def late(conn: Connection) -> None:
        for turn_id, key in ((-1, HELD), (-2, READ)):
            values = {"role": "user", "author_name": "Cy", "content": "a late one", "tokens": 4}
            conn.execute(insert(turns).values(id=turn_id, conversation=str(key), created_at=0.0, **values))

    await cached.store.write(late)
    full = cached.windows.reads["full"]
    await same_requests(llm, held, read, [say("and now?")])
    assert cached.windows.reads["full"] == full + 1
    assert b"Cy: a late one" in held.bodies[-1][-1]


async def test_a_reply_streaming_elsewhere_counts_once_it_finishes(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    """A reply's row is written while it streams (left out of memory) and finished later, uncounted:
    the window reads the rows it saw streaming again until they finish."""
    engine = await make_engine()
    store, windows = engine.store, engine.windows
    conversation = "test:elsewhere"
    question = await store.accept(msg("q1", ConversationKey("test", "elsewhere")), None, "q1", 2)
    assert question is not None and question.turn_id is not None
    streaming = AssistantRecord("partial", "m", "streaming")
    reply = await store.start_reply(conversation, question.turn_id, "u-ada", streaming, 2, {"s": 1})
    recalled = await windows.recall(conversation, 1000)
    assert [turn.content for turn in recalled.turns] == ["q1"]
    await store.save_checkpoints([Checkpoint(reply, "partial, more", "m", 3)])
    assert [turn.content for turn in (await windows.recall(conversation, 1000)).turns] == ["q1"]
    await store.finish_reply(question.id, conversation, reply, question.turn_id, "u-ada", _done("all"), 1)
    recalled = await windows.recall(conversation, 1000)
    assert [turn.content for turn in recalled.turns] == ["q1", "all"]
    assert windows.reads == {"full": 1, "new": 2, "ahead": 0}
    assert (await store.recall(conversation, 1000))[0] == recalled.turns


def _done(text: str) -> AssistantRecord:
    return AssistantRecord(text, "m", "ok")


async def test_the_triggers_count_inserts_and_changes_but_not_a_streaming_reply(
    make_engine: Callable[..., Any],
) -> None:
    engine = await make_engine()
    store = engine.store
    key = ConversationKey("test", "counted")

    async def counters() -> tuple[int, int]:
        def read(conn: Connection) -> tuple[int, int]:
            query = select(turn_changes.c.inserted, turn_changes.c.changed)
            row = conn.execute(query.where(turn_changes.c.conversation == str(key))).one()
            return row.inserted, row.changed

        return await store.read(read)

    entry = await store.accept(msg("hello", key), None, "hello", 2)
    assert entry is not None and entry.turn_id is not None
    assert await counters() == (1, 0)
    reply = await store.start_reply(str(key), entry.turn_id, "u", AssistantRecord("a", "m", "streaming"), 1)
    await store.save_checkpoints([Checkpoint(reply, "ab", "m", 1)])
    await store.finish_reply(entry.id, str(key), reply, entry.turn_id, "u", _done("abc"), 1)
    await store.save_refs(reply, {"s": 2})
    assert await counters() == (2, 0)
    await store.edit_question(entry.turn_id, "hello again", 3)
    assert await counters() == (2, 1)

    def touch(conn: Connection) -> None:  # an update that changes nothing memory reads
        conn.execute(update(turns).where(turns.c.conversation == str(key)).values(model="x"))

    await store.write(touch)
    assert await counters() == (2, 1)
    await store.hide_exchange(entry.turn_id, "forgotten")  # two rows in one statement
    assert await counters() == (2, 3)
    await store.forget(str(key))
    assert await counters() == (2, 5)


async def test_windows_stay_within_their_byte_cap_least_recently_used_first(
    make_engine: Callable[..., Any],
) -> None:
    engine = await make_engine()
    store = engine.store
    for name in ("a", "b", "c"):
        for index in range(20):
            text = f"{name} {index} " + "x" * 400
            await store.accept(msg(text, ConversationKey("test", name)), None, text, 100)
    windows = Windows(store, 60_000)  # about two of these conversations
    for name in ("a", "b", "a", "c", "a"):
        recalled = await windows.recall(f"test:{name}", 100_000)
        assert [turn.content for turn in recalled.turns] == [
            turn.content for turn in (await store.recall(f"test:{name}", 100_000))[0]
        ]
        assert 0 < windows.held_bytes <= 60_000
    # a, b (full), a (held), c (full: b is dropped, a was used since), a (still held)
    assert windows.reads == {"full": 3, "new": 2, "ahead": 0}
    tiny = Windows(store, 1_000)  # a conversation past the cap is answered, and not kept
    assert len((await tiny.recall("test:a", 100_000)).turns) == 20
    assert tiny.held_bytes == 0
    await tiny.recall("test:a", 100_000)
    assert tiny.reads == {"full": 2, "new": 0, "ahead": 0}


async def test_replies_at_once_in_one_conversation_read_it_one_at_a_time(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine()
    people = [Author(f"u-{index}", f"P{index}") for index in range(6)]
    tasks = [await engine.accept(msg(f"hi from {p.display_name}", author=p), {}) for p in people]
    assert all(task is not None for task in tasks)
    await asyncio.gather(*[task for task in tasks if task is not None])
    recalled = await engine.windows.recall("test:general", 100_000)
    assert recalled.turns == (await engine.store.recall("test:general", 100_000))[0]
    assert len(recalled.turns) == 12


async def test_a_recalled_window_counts_its_turns_tokens_however_it_was_cut(
    make_engine: Callable[..., Any],
) -> None:
    """The cut's token count comes from the window's running sums (no walk over its turns): it is what
    the turns chosen count, for the newest turns that fit, for a question with turns after it, for a late
    answer held out of id order, and read from the store."""
    engine = await make_engine()
    store = engine.store
    key = ConversationKey("test", "counted-cut")
    questions = []
    for index in range(12):
        text = f"question {index} " + "y" * (index * 37 % 200)
        entry = await store.accept(msg(text, key), None, text, 5 + index * 7 % 30)
        assert entry is not None and entry.turn_id is not None
        questions.append(entry)
    late = questions[3]  # answered after every later question was asked
    assert late.turn_id is not None
    reply = await store.start_reply(str(key), late.turn_id, "u", AssistantRecord("a", "m", "streaming"), 1)
    await store.finish_reply(late.id, str(key), reply, late.turn_id, "u", _done("late " * 30), 40)
    held, unheld = Windows(store, 10_000_000), Windows(store, 0)
    cuts = set()
    for budget in (10, 60, 150, 100_000):
        for upto in (None, questions[7].turn_id):
            for windows in (held, unheld):
                recalled = await windows.recall(str(key), budget, upto=upto)
                assert recalled.tokens == sum(turn.tokens for turn in recalled.turns), (budget, upto)
                cuts.add((len(recalled.turns), recalled.trimmed))
    assert {(13, False), (9, False)} <= cuts and any(trimmed and count > 1 for count, trimmed in cuts)
