"""/summarize through the engine: what is read through the port, what the model is asked, in parts when
the range is longer than the model's window, and the sentences that answer a mistake or a failure."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.engine import Engine
from bot.models import ConversationKey, HistoryEntry
from bot.platform import HistoryUnavailable
from bot.summarize import MAX_MESSAGES, parse_range
from bot.when import BadWhen
from tests.conftest import RecordingPlatform
from tests.support.asking import ADA, CHANNEL, ask
from tests.support.history import said
from tests.support.llm_server import LLMServer, Script

NOW = datetime(2026, 12, 2, 15, 30, tzinfo=UTC)  # a Wednesday


def user_block(llm: LLMServer, index: int) -> str:
    (message,) = [m for m in llm.chat_requests()[index].json["messages"] if m["role"] == "user"]
    return str(message["content"])


def test_ranges_are_the_last_100_a_count_or_a_start_in_the_conversations_zone() -> None:
    assert parse_range("", "UTC", NOW).count == 100
    assert parse_range("250", "UTC", NOW).count == 250
    assert parse_range("since 2h", "UTC", NOW).start == datetime(2026, 12, 2, 13, 30, tzinfo=UTC)
    assert parse_range("since 1d", "UTC", NOW).start == datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    # Midnight where the conversation is: 23:00 UTC the day before in Berlin, in winter.
    start = parse_range("since yesterday", "Europe/Berlin", NOW).start
    assert start is not None and start.astimezone(UTC) == datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    monday = parse_range("since monday", "America/New_York", NOW).start
    assert monday is not None and monday.astimezone(UTC) == datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
    today = parse_range("since wednesday", "UTC", NOW).start  # today is Wednesday: since this morning
    assert today == datetime(2026, 12, 2, tzinfo=UTC)


@pytest.mark.parametrize("args", ["0", str(MAX_MESSAGES + 1), "since the dawn of time", "everything"])
def test_a_range_it_cannot_read_is_answered_with_an_example(args: str) -> None:
    with pytest.raises(BadWhen) as refused:
        parse_range(args, "UTC", NOW)
    assert "`/summarize since yesterday`" in str(refused.value) and "\n" not in str(refused.value)


async def test_summarize_reads_the_channel_marks_parleys_own_and_keeps_the_links(
    engine: Engine, platform: RecordingPlatform, llm: LLMServer
) -> None:
    platform.channel_messages[CHANNEL] = said(30, parley={4, 9})
    llm.enqueue(Script(tokens=["Ada and Bob ", "agreed to ship."]))
    final = await ask(engine, "/summarize")
    assert final == "Ada and Bob agreed to ship."
    block = user_block(llm, 0)
    assert block.count("message number") == 30
    assert "Parley (Parley): message number 4" in block and "Ada: message number 3" in block
    assert "<https://chat.example/general/h29>" in block
    system = llm.chat_requests()[0].json["messages"][0]["content"]
    assert "Lines marked (Parley) are your own earlier replies" in system
    # The summary stays in the conversation's memory: a follow-up question reads it.
    await ask(engine, "and what did Cy say?")
    contents = [m["content"] for m in llm.chat_requests()[1].json["messages"]]
    assert "Ada and Bob agreed to ship." in contents


async def test_a_count_and_a_since_range_read_back_page_by_page(
    engine: Engine, platform: RecordingPlatform, llm: LLMServer
) -> None:
    now = datetime.now(UTC).timestamp()
    # One a minute, the newest 30 s ago.
    platform.channel_messages[CHANNEL] = said(500, start=now - 500 * 60 + 30)
    await ask(engine, "/summarize 450")
    block = user_block(llm, 0)
    assert block.count("message number") == 450 and "message number 50 " in block
    assert "message number 49 " not in block
    await ask(engine, "/summarize since 2h")
    block = user_block(llm, 1)
    assert "message number 380 " in block and "message number 379 " not in block  # 120 minutes


async def test_a_range_longer_than_the_window_is_summarized_in_parts_then_combined(
    make_engine: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    llm.models[0]["context_length"] = 3000  # about 40 lines a part, once the reply's room is kept
    engine = await make_engine()
    platform.channel_messages[CHANNEL] = said(320)
    final = await ask(engine, "/summarize 320")
    requests = llm.chat_requests()
    parts = len(requests) - 1
    assert parts > 2
    assert final.startswith(f"Summarizing 320 messages in {parts} parts: 1 2")
    assert f" {parts} done.\n\n" in final
    seen = "".join(user_block(llm, n) for n in range(parts))
    assert all(f"message number {n} " in seen for n in range(320))  # every message in one part
    # The combining request holds each part's notes (the loopback model echoes its input).
    assert user_block(llm, parts).count("echo:") == parts
    # The progress line only ever grew: each render extends the one before.
    (surface,) = [s for _, _, s in platform.surfaces]
    texts = [text for text, _ in surface.renders]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))


async def test_a_summary_cut_by_the_reply_timeout_says_so(
    make_engine: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    engine = await make_engine(reply_timeout=0.5)
    platform.channel_messages[CHANNEL] = said(10)
    llm.enqueue(Script(tokens=["Partly", " done"], delay=2.0))
    final = await ask(engine, "/summarize")
    assert final.endswith("_The reply took longer than 0.5 seconds and was stopped._")


async def test_nothing_to_read_or_a_refusal_is_one_sentence(
    engine: Engine, platform: RecordingPlatform, llm: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await ask(engine, "/summarize") == "_There are no messages here to summarize._"
    assert "`/summarize since yesterday`" in await ask(engine, "/summarize since whenever")

    async def refuse(conversation: ConversationKey, **asked: Any) -> list[HistoryEntry]:
        raise HistoryUnavailable("Discord refused the messages of test:general (403: Missing Access)")

    monkeypatch.setattr(platform, "history", refuse)
    final = await ask(engine, "/summarize")
    assert final == (
        "_Parley could not read the messages here: Discord refused the messages of test:general "
        "(403: Missing Access)._"
    )
    assert llm.chat_requests() == []


async def test_in_a_thread_it_summarizes_the_thread(
    engine: Engine, platform: RecordingPlatform, llm: LLMServer
) -> None:
    thread = ConversationKey("test", "general", "t1")
    platform.channel_messages[CHANNEL] = said(5)
    platform.channel_messages[thread] = said(3, start=1_790_000_000.0)
    await ask(engine, "/summarize", thread)
    assert user_block(llm, 0).count("message number") == 3


async def test_a_summary_counts_every_part_and_is_held_by_the_budgets(
    make_engine: Callable[..., Any], platform: RecordingPlatform, llm: LLMServer
) -> None:
    llm.models[0]["context_length"] = 3000
    engine = await make_engine(budgets={"person_daily_tokens": 1000})
    platform.channel_messages[CHANNEL] = said(320)
    await ask(engine, "/summarize 320")
    requests = len(llm.chat_requests())
    assert requests > 3
    # Every part and the combining request are spent by the reply, 12 + 3 tokens each (the loopback's).
    assert await engine.store.spent("person", f"test:{ADA.id}", 0) == (0.0, 15 * requests)
    llm.enqueue(Script(tokens=["long"], usage=(990, 10)))
    assert await ask(engine, "hello") == "long"
    refused = await ask(engine, "/summarize")
    assert refused.startswith("Your daily budget of 1,000 tokens is used up")
    assert len(llm.chat_requests()) == requests + 1  # the summary sent nothing
