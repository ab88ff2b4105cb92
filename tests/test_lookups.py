"""What a reply looks up before it starts (bot/lookups.py): read in one store hop with what its window reads,
and never kept between messages, so what another instance changed on the same database reaches the next
message, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from bot.engine import Engine
from bot.models import Author
from tests.support.asking import CHANNEL, ask, msg
from tests.support.llm_server import LLMServer
from tests.support.store_reads import count_reads

pytestmark = pytest.mark.both_databases

MAX = Author("u-max", "Max", is_channel_manager=True)


async def command(engine: Engine, line: str, author: Author = MAX) -> str:
    return (await engine.run_command(msg("/" + line, CHANNEL, author, server_id="S1"), line)).text


async def test_a_reply_looks_up_its_settings_budgets_summary_and_new_turns_in_one_hop(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine()
    assert await ask(engine, "first") == "echo: Ada: first"  # the window is read in full once
    reads = count_reads(engine)
    assert await ask(engine, "second", server_id="S1") == "echo: Ada: second"
    # One look-up, in which the window read what was added since it was last brought up to date. On
    # SQLite the turn was free, so the look-up ran in the message's accept: no read of its own. On
    # PostgreSQL the turn is taken on the lock's own connection (its check for an earlier message of
    # Ada's in the same statement), then the look-up reads, in a batch with whatever other look-ups
    # were asked for meanwhile (here none).
    assert reads == (["look_up_many"] if engine.store.shared else [])
    assert engine.windows.reads == {"full": 1, "new": 0, "ahead": 1}


async def test_what_another_instance_changed_reaches_the_next_message(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    """Settings, skill modes and budgets changed through the other engine are read by this one's next
    reply (nothing is kept in memory between messages, whichever instance answers)."""
    here, there = await make_engine(), await make_engine()
    assert await ask(here, "before", server_id="S1") == "echo: Ada: before"
    before = llm.chat_requests()[-1].json
    assert before["messages"][0]["role"] == "system"
    assert "tools" in before and "read_page" in str(before["tools"])

    assert (await command(there, "system Answer like a pirate.")).startswith("System prompt set")
    assert (await command(there, "skills read_page off")).endswith("off.")
    assert await ask(here, "after", server_id="S1") == "echo: Ada: after"
    after = llm.chat_requests()[-1].json
    assert after["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert "read_page" not in str(after.get("tools", ""))

    assert (await command(there, "model openrouter/openai/gpt-4o-mini")) == (
        "This channel now uses openrouter/openai/gpt-4o-mini."
    )
    assert await ask(here, "again", server_id="S1") == "echo: Ada: again"
    assert llm.chat_requests()[-1].json["model"] == "openai/gpt-4o-mini"

    answered = len(llm.chat_requests())
    assert (await command(there, "budget channel daily tokens 1")).endswith("is now 1 tokens.")
    refused = await ask(here, "over", server_id="S1")
    assert refused.startswith("This channel's daily budget of 1 tokens is used up")
    assert len(llm.chat_requests()) == answered  # refused before anything was sent

    assert (await command(there, "budget channel daily tokens off")).endswith("is now off.")
    assert (await command(there, "reset")).startswith("Forgot")
    assert await ask(here, "afresh", server_id="S1") == "echo: Ada: afresh"
    system, *turns = llm.chat_requests()[-1].json["messages"]
    assert [turn["content"] for turn in turns] == ["Ada: afresh"]  # the other instance's /reset
    assert system["content"] == "Answer like a pirate."  # which keeps the settings


async def test_a_window_read_ahead_is_read_again_once_another_reply_moved_the_window(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    """A read made ahead of the window's lock is for the window as it stood then: once another reply
    moved the window, it is not used, and what is new since is read instead."""
    engine = await make_engine()
    conversation = str(CHANNEL)
    assert await ask(engine, "first") == "echo: Ada: first"
    read_ahead = engine.windows.read_ahead(conversation)
    assert read_ahead is not None
    stale = await engine.store.read(read_ahead)
    assert await ask(engine, "second") == "echo: Ada: second"  # moves the window on
    before = dict(engine.windows.reads)
    recalled = await engine.windows.recall(conversation, 100_000, ahead=stale)
    reads = engine.windows.reads
    assert (reads["new"], reads["ahead"]) == (before["new"] + 1, before["ahead"])  # read anew, not used
    assert recalled.turns == (await engine.store.recall(conversation, 100_000))[0]
    assert [turn.content for turn in recalled.turns][-2:] == ["second", "echo: Ada: second"]


async def test_replies_from_several_people_at_once_each_see_their_own_question(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    """Messages from several people at once each look up ahead of the window's lock; whichever read is
    used, each reply sees its own question and the window stays the store's."""
    engine = await make_engine()
    assert await ask(engine, "first") == "echo: Ada: first"
    people = [Author(f"u-{index}", f"P{index}") for index in range(4)]
    tasks = [await engine.accept(msg(f"hi from {p.display_name}", author=p), {}) for p in people]
    assert all(task is not None for task in tasks)
    await asyncio.gather(*[task for task in tasks if task is not None])
    for request in llm.chat_requests()[1:]:  # each reply saw its own question, as the store had it
        name, _, text = request.json["messages"][-1]["content"].partition(": ")
        assert text == f"hi from {name}"
    recalled = await engine.windows.recall(str(CHANNEL), 100_000)
    assert recalled.turns == (await engine.store.recall(str(CHANNEL), 100_000))[0]
    assert len(recalled.turns) == 10
