"""What a reply looks up before it starts (bot/lookups.py): read in one store hop besides its window's, and
never kept between messages, so what another instance changed on the same database reaches the next
message, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from bot.engine import Engine
from bot.models import Author
from tests.support.asking import CHANNEL, ask, msg
from tests.support.llm_server import LLMServer

pytestmark = pytest.mark.both_databases

MAX = Author("u-max", "Max", is_channel_manager=True)


def count_reads(engine: Engine) -> list[str]:
    """The name of every function the engine's store reads with, from now on."""
    names: list[str] = []
    read = engine.store.read

    async def counted(work: Callable[..., Any]) -> Any:
        names.append((work.func if isinstance(work, partial) else work).__name__)
        return await read(work)

    engine.store.read = counted  # type: ignore[method-assign]
    return names


async def command(engine: Engine, line: str, author: Author = MAX) -> str:
    return (await engine.run_command(msg("/" + line, CHANNEL, author, server_id="S1"), line)).text


async def test_a_reply_reads_its_settings_budgets_and_summary_in_one_hop(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine()
    assert await ask(engine, "first") == "echo: Ada: first"  # the window is read in full once
    reads = count_reads(engine)
    assert await ask(engine, "second", server_id="S1") == "echo: Ada: second"
    # On PostgreSQL the turn is taken there first (an earlier message of Ada's unanswered elsewhere?);
    # then the one look-up, and the window reads only what was added since.
    assert reads[-2:] == ["look_up", "_since"]
    assert len(reads) == (3 if engine.store.shared else 2)


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
