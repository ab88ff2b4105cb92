"""Long conversations keep their gist: turns that fall out of a small model's window reach it through a
running summary, made by the real provider code against the loopback LLM server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.engine import Engine
from bot.reply import LEFT_OUT_NOTE, SUMMARIZED_NOTE
from bot.summaries import HEADING, INSTRUCTIONS
from tests.support.asking import CHANNEL, ask, msg, until
from tests.support.cli import parley
from tests.support.llm_server import LLMServer, RecordedRequest, Script

FILLER = " ".join(f"word{n}" for n in range(120))  # a message that takes a good share of the window


def system_of(request: RecordedRequest) -> str:
    return next(m["content"] for m in request.json["messages"] if m["role"] == "system")


def conversation_of(request: RecordedRequest) -> list[str]:
    return [m["content"] for m in request.json["messages"] if m["role"] != "system"]


def summary_requests(llm: LLMServer) -> list[RecordedRequest]:
    return [r for r in llm.chat_requests() if system_of(r) == INSTRUCTIONS]


def replies(llm: LLMServer) -> list[RecordedRequest]:
    return [r for r in llm.chat_requests() if system_of(r) != INSTRUCTIONS]


@pytest.fixture
def small_window(llm: LLMServer) -> dict[str, Any]:
    llm.models.append({"id": "tiny", "context_length": 2000})
    return {"default_model": "openrouter/tiny"}


async def fall_out(engine: Engine, llm: LLMServer, fact: str, limit: int = 12) -> RecordedRequest:
    """Ask filler questions until `fact` is no longer among the turns the model is sent."""
    for n in range(limit):
        await ask(engine, f"{n} {FILLER}")
        last = replies(llm)[-1]
        if not any(fact in turn for turn in conversation_of(last)):
            return last
    raise AssertionError(f"{fact!r} never fell out of the window")


async def test_a_first_fact_reaches_the_model_through_the_summary_after_it_fell_out(
    make_engine: Callable[..., Any], llm: LLMServer, small_window: dict[str, Any]
) -> None:
    engine = await make_engine(**small_window, summary_wait_seconds=60)  # bounded, and never reached here
    await ask(engine, "My cat is called Mittens.")
    assert summary_requests(llm) == []  # nothing to summarize while everything fits
    first_without = await fall_out(engine, llm, "Mittens")
    (made,) = summary_requests(llm)
    assert "Mittens" in conversation_of(made)[0] and "(none yet)" in conversation_of(made)[0]
    assert HEADING in system_of(first_without) and "Mittens" in system_of(first_without)
    # More turns fall out: the summary is updated from the one before, not rebuilt from scratch.
    await fall_out(engine, llm, "0 word0")
    later = summary_requests(llm)[-1]
    # (the loopback's summaries echo what they were given, so "so far" is the previous one's echo)
    assert len(summary_requests(llm)) >= 2 and conversation_of(later)[0].startswith("Summary so far:\necho: ")
    assert "Mittens" in conversation_of(later)[0]  # the summary so far, carried forward
    assert "Mittens" in system_of(replies(llm)[-1])
    history = (await engine.run_command(msg("/history"), "history")).text
    assert "Summary of the older turns:" in history and "Mittens" in history
    await engine.run_command(msg("/reset"), "reset")
    assert await engine.store.summary(str(CHANNEL)) is None


async def test_the_note_says_older_messages_reach_the_model_as_a_summary(
    make_engine: Callable[..., Any], llm: LLMServer, small_window: dict[str, Any]
) -> None:
    engine = await make_engine(**small_window, summary_wait_seconds=60)
    await ask(engine, "My cat is called Mittens.")
    answers = [await ask(engine, f"{n} {FILLER}") for n in range(12)]
    noted = [answer for answer in answers if "Older messages" in answer]
    assert len(noted) == 1  # once per conversation
    assert f"_{SUMMARIZED_NOTE}_" in noted[0] and LEFT_OUT_NOTE not in noted[0]


async def test_a_reply_waits_for_a_slow_summary_only_so_long(
    make_engine: Callable[..., Any], llm: LLMServer, small_window: dict[str, Any]
) -> None:
    engine = await make_engine(**small_window, summary_wait_seconds=0.2)
    await ask(engine, "My cat is called Mittens.")
    gate = asyncio.Semaphore(0)
    llm.by_system[INSTRUCTIONS] = Script(tokens=["Ada's cat is Mittens."], gate=gate)
    first_without = await fall_out(engine, llm, "Mittens")  # answered while the summary is held
    assert HEADING not in system_of(first_without)
    gate.release()
    async with asyncio.timeout(10):
        while await engine.store.summary(str(CHANNEL)) is None:
            await asyncio.sleep(0.02)
    await ask(engine, "What is my cat called?")
    assert "Ada's cat is Mittens." in system_of(replies(llm)[-1])


async def test_a_summary_that_cannot_be_made_leaves_the_reply_as_it_was(
    make_engine: Callable[..., Any], llm: LLMServer, small_window: dict[str, Any]
) -> None:
    engine = await make_engine(**small_window, summary_wait_seconds=60)
    await ask(engine, "My cat is called Mittens.")
    llm.by_system[INSTRUCTIONS] = Script(status=500)
    last = await fall_out(engine, llm, "Mittens")
    assert HEADING not in system_of(last) and last.json["messages"]  # answered all the same
    assert await engine.store.summary(str(CHANNEL)) is None


async def test_in_the_terminal_a_first_fact_reaches_the_model_through_the_summary(
    llm: LLMServer, small_window: dict[str, Any], workdir: Path
) -> None:
    llm.echo_usage = None  # the loopback's tiny usage figures would teach Parley that turns cost nothing
    lines = ["My cat is called Mittens.", *(f"{n} {FILLER}" for n in range(10)), "What is my cat called?"]
    code, _out, err = await parley(
        llm,
        workdir,
        "chat",
        stdin="\n".join(lines) + "\n",
        DEFAULT_MODEL=small_window["default_model"],
        SUMMARY_WAIT_SECONDS="60",
    )
    assert code == 0, err
    last = replies(llm)[-1]
    assert conversation_of(last)[-1].endswith("What is my cat called?")
    assert not any("Mittens" in turn for turn in conversation_of(last))
    assert HEADING in system_of(last) and "Mittens" in system_of(last)


async def test_a_reply_that_waits_for_no_summary_starts_the_update_once_its_request_is_out(
    make_engine: Callable[..., Any], llm: LLMServer, small_window: dict[str, Any]
) -> None:
    """With SUMMARY_WAIT_SECONDS=0 the update does not contend with the reply's request: it starts once
    the reply's first text is in (here on an engine with no update of its own under way yet)."""
    first = await make_engine(**small_window, summary_wait_seconds=60)
    await ask(first, "My cat is called Mittens.")
    await fall_out(first, llm, "Mittens")  # each update done before its reply went on
    made = len(summary_requests(llm))
    later = await make_engine(**small_window, summary_wait_seconds=0)
    reads: list[str] = []
    read = later.store.read

    async def counted(work: Callable[..., Any]) -> Any:
        reads.append(getattr(work, "__qualname__", ""))
        return await read(work)

    later.store.read = counted  # type: ignore[method-assign]
    llm.by_system[INSTRUCTIONS] = Script(tokens=["Ada's cat is Mittens."])
    gate = asyncio.Semaphore(0)
    llm.enqueue(Script(tokens=["Noted."], gate=gate))
    asked = len(replies(llm))
    message = msg(f"again {FILLER}")
    reply = await later.accept(message, {"message": message.id})
    assert reply is not None
    await until(lambda: len(replies(llm)) == asked + 1, "the reply's request")
    assert not any(name.startswith("Store.summary") for name in reads)  # the update has not started
    gate.release()
    assert await reply == "ok"
    await until(lambda: len(summary_requests(llm)) == made + 1, "the update's request")
    assert any(name.startswith("Store.summary") for name in reads)
