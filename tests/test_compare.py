"""/compare through the engine: two ordinary replies at once, labelled A and B and blind, a vote per
person, and memory left as it was; with the real provider code against the loopback LLM server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, select

from bot import arena, arena_store
from bot.arena_store import Comparison, Prompt
from bot.compare import NOTHING_ASKED, RESTARTED, TYPED_BALLOT, USAGE
from bot.engine import Engine
from bot.models import Author, Message
from bot.schema import comparisons, turns, usage
from bot.store import AssistantRecord
from tests.conftest import RecordingPlatform, RecordingSurface
from tests.support.asking import ADA, CHANNEL, ask, msg
from tests.support.llm_server import LLMServer, Script

BEA = Author("u-bea", "Bea")
MINI, MIMO = "openrouter/openai/gpt-4o-mini", "openrouter/xiaomi/mimo-v2-flash"
IDS = {MINI: "openai/gpt-4o-mini", MIMO: "xiaomi/mimo-v2-flash"}


async def compare(engine: Engine, line: str, author: Author = ADA) -> tuple[Any, list[RecordingSurface]]:
    """Run a /compare message to its end: its outcome and the surfaces it opened (A, B, the ballot)."""
    platform = engine.platforms["test"]
    assert isinstance(platform, RecordingPlatform)
    before = len(platform.surfaces)
    message = msg(line, author=author)
    task = await engine.accept(message, {"message": message.id})
    assert task is not None
    outcome = await task
    return outcome, [surface for _, _, surface in platform.surfaces[before:]]


async def gated_compare(
    engine: Engine, llm: LLMServer
) -> tuple[dict[str, asyncio.Semaphore], Message, asyncio.Task[Any]]:
    """/compare MINI MIMO under way, each model's tokens waiting for releases of its gate."""
    gates = {name: asyncio.Semaphore(0) for name in IDS}
    llm.by_model[IDS[MINI]] = Script(tokens=["Four", " (mini)."], gate=gates[MINI])
    llm.by_model[IDS[MIMO]] = Script(tokens=["4", " (mimo)."], gate=gates[MIMO])
    message = msg(f"/compare {MINI} {MIMO} What is 2+2?")
    task = await engine.accept(message, {"message": message.id})
    assert task is not None
    return gates, message, task


async def stored(engine: Engine) -> list[Comparison]:
    def work(conn: Connection) -> list[Comparison]:
        rows = conn.execute(select(comparisons).order_by(comparisons.c.id)).mappings().all()
        return [arena_store._comparison(row) for row in rows]

    return await engine.store.read(work)


async def memory(engine: Engine) -> list[tuple[str, str]]:
    turns, _ = await engine.store.recall(str(CHANNEL), 100_000)
    return [(turn.role, turn.content) for turn in turns]


@pytest.mark.both_databases
async def test_two_labelled_answers_stream_at_once_blind_then_the_ballot(
    engine: Engine, llm: LLMServer, platform: RecordingPlatform
) -> None:
    await ask(engine, "Remember 42.")
    gates, message, task = await gated_compare(engine, llm)
    async with asyncio.timeout(10):  # both requests are under way before either has a token
        while len(llm.chat_requests()) < 3:
            await asyncio.sleep(0.01)
    for gate in gates.values():
        gate.release()
        gate.release()
    assert await task == "ok"
    (comparison,) = await stored(engine)
    a, b, ballot = [surface for conversation, _, surface in platform.surfaces[-3:]]
    assert platform.surfaces[-3][1] == {"message": message.id}  # A answers where the command is answered
    assert platform.surfaces[-2][1] is None  # B is a message of its own in the conversation
    texts = {MINI: "Four (mini).", MIMO: "4 (mimo)."}
    assert a.final == f"**Answer A**\n\n{texts[comparison.model_a]}"
    assert b.final == f"**Answer B**\n\n{texts[comparison.model_b]}"
    for surface in (a, b, ballot):
        assert (
            "mini/" not in surface.final and "gpt-4o" not in surface.final and "mimo-v2" not in surface.final
        )
    assert ballot.final == TYPED_BALLOT
    assert {comparison.model_a, comparison.model_b} == {MINI, MIMO} and comparison.state == "ready"
    # Both saw the conversation so far and the prompt; afterwards memory is as it was before.
    for request in llm.chat_requests()[1:]:
        contents = [m["content"] for m in request.json["messages"]]
        assert contents[-1].endswith("What is 2+2?") and any("Remember 42." in c for c in contents)
    assert await memory(engine) == [("user", "Remember 42."), ("assistant", "echo: Ada: Remember 42.")]

    def models_used(conn: Connection) -> list[str]:
        return sorted(conn.execute(select(usage.c.name).where(usage.c.kind == "model")).scalars())

    assert await engine.store.read(models_used) == sorted([MIMO, MIMO, MINI])


@pytest.mark.both_databases
async def test_each_side_is_stored_with_its_label_for_a_repair_to_show(
    engine: Engine, llm: LLMServer
) -> None:
    gates, _message, task = await gated_compare(engine, llm)
    for gate in gates.values():  # one token each: both sides are shown, and streaming
        gate.release()

    def streaming_refs(conn: Connection) -> list[dict[str, Any]]:
        shown = (turns.c.outcome == "streaming") & turns.c.reply_refs.is_not(None)
        return [json.loads(refs) for refs in conn.execute(select(turns.c.reply_refs).where(shown)).scalars()]

    async with asyncio.timeout(10):
        while len(refs := await engine.store.read(streaming_refs)) < 2:
            await asyncio.sleep(0.01)
    assert sorted(side["compare_label"] for side in refs) == ["A", "B"]
    for gate in gates.values():
        gate.release()
    assert await task == "ok"


async def test_which_model_is_a_is_drawn_at_random_and_kept(engine: Engine, llm: LLMServer) -> None:
    drawn: set[tuple[str, str]] = set()
    for _ in range(40):  # until both orders are seen: one only in 40 draws is a chance of 2 in 10^12
        if len(drawn) == 2:
            break
        llm.by_model[IDS[MINI]] = Script(tokens=["mini"])
        llm.by_model[IDS[MIMO]] = Script(tokens=["mimo"])
        outcome, (a, _b, _ballot) = await compare(engine, f"/compare {MINI} {MIMO} hi")
        assert outcome == "ok"
        comparison = (await stored(engine))[-1]
        assert a.final.endswith("mini" if comparison.model_a == MINI else "mimo")
        drawn.add((comparison.model_a, comparison.model_b))
    assert drawn == {(MINI, MIMO), (MIMO, MINI)}


@pytest.mark.both_databases
async def test_each_person_votes_once_and_learns_the_names_after_voting(
    engine: Engine, llm: LLMServer
) -> None:
    await compare(engine, f"/compare {MINI} {MIMO} hi")
    (comparison,) = await stored(engine)
    told = (await engine.run_command(msg("/vote a"), "vote a")).text
    assert told == f"Thanks: you voted A is better. A was {comparison.model_a}, B was {comparison.model_b}."
    again = (await engine.run_command(msg("/vote b"), "vote b")).text
    assert again == "You already voted on this comparison (A is better); each person votes once."
    assert "tie" in await arena.vote(engine, comparison.id, BEA, "tie")
    assert (await engine.run_command(msg("/vote maybe"), "vote maybe")).text.startswith("Usage: /vote")
    board = (await engine.run_command(msg("/arena"), "arena")).text
    assert f"{comparison.model_a} — " in board and "2 votes" in board
    assert "1 won, 0 lost, 1 tied" in board and "0 won, 1 lost, 1 tied" in board
    votes = await engine.store.read(arena_store.votes("test"))
    assert sorted(vote.choice for vote in votes) == ["a", "tie"]


@pytest.mark.both_databases
async def test_two_clicks_by_one_person_at_once_count_once(engine: Engine, llm: LLMServer) -> None:
    await compare(engine, f"/compare {MINI} {MIMO} hi")
    (comparison,) = await stored(engine)
    said = await asyncio.gather(*(arena.vote(engine, comparison.id, BEA, choice) for choice in ("a", "b")))
    assert sorted(text.split(":")[0].split(" (")[0] for text in said) == [
        "Thanks",
        "You already voted on this comparison",
    ]
    assert len(await engine.store.read(arena_store.votes("test"))) == 1


async def test_an_unknown_model_or_a_failing_provider_ends_its_side_only_and_no_vote(
    engine: Engine, llm: LLMServer, platform: RecordingPlatform
) -> None:
    llm.by_model[IDS[MINI]] = Script(tokens=["fine"])
    outcome, surfaces = await compare(engine, f"/compare openrouter/no-such-model {MINI} hi")
    assert outcome == "error" and len(surfaces) == 2  # no ballot
    texts = sorted(surface.final for surface in surfaces)
    assert any(text.endswith("\n\nfine") for text in texts)
    assert any("no-such-model" in text and "fine" not in text for text in texts)

    llm.by_model[IDS[MINI]] = Script(tokens=["fine"])
    llm.by_model[IDS[MIMO]] = Script(status=401)
    outcome, surfaces = await compare(engine, f"/compare {MINI} {MIMO} hi")
    assert outcome == "error" and len(surfaces) == 2
    finals = [surface.final for surface in surfaces]
    assert sum(final.endswith("\n\nfine") for final in finals) == 1
    assert [c.state for c in await stored(engine)] == ["failed", "failed"]
    assert (await engine.run_command(msg("/vote a"), "vote a")).text.startswith("There is no comparison")
    assert await memory(engine) == []


async def test_the_same_model_twice_or_missing_names_get_one_sentence(engine: Engine, llm: LLMServer) -> None:
    outcome, (only,) = await compare(engine, f"/compare {MINI} openai/gpt-4o-mini hi")
    assert outcome == "command"
    assert only.final == f"Pick two different models to compare; both names are {MINI}."
    outcome, (only,) = await compare(engine, f"/compare {MINI}")
    assert only.final == USAGE
    assert llm.chat_requests() == [] and await stored(engine) == []


async def test_without_a_prompt_it_compares_on_your_own_last_question(engine: Engine, llm: LLMServer) -> None:
    outcome, (only,) = await compare(engine, f"/compare {MINI} {MIMO}")
    assert only.final == NOTHING_ASKED
    await ask(engine, "What is the capital of France?")
    await ask(engine, "Unrelated question", author=BEA)
    before = await memory(engine)
    outcome, (a, b, ballot) = await compare(engine, f"/compare {MINI} {MIMO}")
    assert outcome == "ok" and ballot.final == TYPED_BALLOT
    assert a.final.endswith("echo: Ada: What is the capital of France?") and b.final.startswith(
        "**Answer B**"
    )
    for request in llm.chat_requests()[-2:]:
        assert request.json["messages"][-1]["content"] == "Ada: What is the capital of France?"
    assert await memory(engine) == before  # the question keeps the answer it had


async def test_stop_ends_both_sides_and_closes_both_requests(
    engine: Engine, llm: LLMServer, platform: RecordingPlatform
) -> None:
    for name in IDS:
        llm.by_model[IDS[name]] = Script(tokens=["Partly", " more"], gate=asyncio.Semaphore(1))
    message = msg(f"/compare {MINI} {MIMO} go")
    task = await engine.accept(message, {"message": message.id})
    assert task is not None
    async with asyncio.timeout(10):
        while sum(1 for _, _, s in platform.surfaces if s.renders) < 2:
            await asyncio.sleep(0.01)
    assert (await engine.run_command(msg("/stop", author=BEA), "stop")).text.startswith("Only the person")
    assert (await engine.run_command(msg("/stop"), "stop")).text == "Stopped."
    await asyncio.wait({task})
    a, b = [surface for _, _, surface in platform.surfaces]
    assert (
        a.final == "**Answer A**\n\nPartly\n\n_Stopped._"
        and b.final == "**Answer B**\n\nPartly\n\n_Stopped._"
    )
    async with asyncio.timeout(5):
        while len(llm.closed_by_client) < 2:
            await asyncio.sleep(0.01)
    (comparison,) = await stored(engine)
    assert comparison.state == "failed"
    assert await memory(engine) == []  # the stopped side trip left nothing in memory


@pytest.mark.both_databases
async def test_a_comparison_cut_by_a_crash_is_repaired_then_void_not_run_again(
    make_engine: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    """What a killed process leaves: the /compare message still pending, its comparison begun and side A
    half shown. The next start repairs A like any reply, then says the comparison is void."""
    crashed = await make_engine()
    store = crashed.store
    entry = await store.accept(msg(f"/compare {MINI} {MIMO} hi"), {"message": "cmp"}, "", 0)
    assert entry is not None
    prompt = Prompt(None, "hi", ADA.id, ADA.display_name, 1)
    comparison = await store.write(arena_store.start(entry.id, "test", str(CHANNEL), prompt, (MINI, MIMO)))
    assert comparison is not None
    record = AssistantRecord("Half an ans", MINI, "streaming")
    refs = {"surface": 9002, "compare_label": "A"}
    await store.start_reply(str(CHANNEL), comparison.question, ADA.id, record, 3, refs)
    await crashed.aclose()

    restarted = await make_engine()
    await restarted.recover("test")
    await asyncio.gather(*restarted._tasks)
    (reopened,) = [s for _, _, s in platform.surfaces if s.reopened]
    cut = "Half an ans\n\n_Cut off: Parley restarted before this reply was finished._"
    assert reopened.final == f"**Answer A**\n\n{cut}"  # still labelled
    (surface,) = [s for _, reply_to, s in platform.surfaces if reply_to == {"message": "cmp"}]
    assert surface.final == RESTARTED
    assert llm.chat_requests() == []  # not asked again
    assert [c.state for c in await stored(restarted)] == ["failed"]
    assert await memory(restarted) == []
