"""Durable memory and settings on SQLite: what survives a restart, what fits a budget, what dedupes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.store import AssistantRecord, Store


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/nested/dir/parley.db"


async def test_turns_and_settings_survive_a_restart(db_url: str) -> None:
    store = await Store.open(db_url)
    turn_id, recalled, trimmed = await store.add_user_turn_and_recall(
        "console:a", "u1", "Ada", "remember the number 42", 10, 100
    )
    assert [(t.id, t.content) for t in recalled] == [(turn_id, "remember the number 42")] and not trimmed
    await store.add_assistant_turn("console:a", AssistantRecord("I will.", "openrouter/x", "ok"), 5)
    await store.set_setting("console:a", "model", "openai/gpt-4o", "u1")
    await store.close()

    reopened = await Store.open(db_url)
    turns, trimmed = await reopened.recent_turns("console:a", 1000)
    assert [(t.role, t.author_name, t.content) for t in turns] == [
        ("user", "Ada", "remember the number 42"),
        ("assistant", "", "I will."),
    ]
    assert not trimmed
    assert (await reopened.settings(["console:a"]))[0]["model"] == "openai/gpt-4o"
    await reopened.close()


async def test_recent_turns_keep_the_newest_that_fit_and_say_so(db_url: str) -> None:
    store = await Store.open(db_url)
    for index in range(200):  # more than one page
        await store.add_user_turn_and_recall("c", "u", "U", f"turn {index}", 10, 0)
    await store.add_user_turn_and_recall("other", "u", "U", "not mine", 10, 0)
    turns, trimmed = await store.recent_turns("c", 95)
    assert [t.content for t in turns] == [f"turn {i}" for i in range(191, 200)]
    assert trimmed
    everything, trimmed_all = await store.recent_turns("c", 10_000)
    assert len(everything) == 200 and not trimmed_all
    await store.close()


async def test_forget_only_clears_one_conversation(db_url: str) -> None:
    store = await Store.open(db_url)
    await store.add_user_turn_and_recall("c1", "u", "U", "a", 1, 0)
    await store.add_user_turn_and_recall("c1", "u", "U", "b", 1, 0)
    await store.add_user_turn_and_recall("c2", "u", "U", "c", 1, 0)
    assert await store.forget("c1") == 2
    assert await store.count_turns("c1") == 0
    assert await store.count_turns("c2") == 1
    await store.close()


async def test_a_reply_streaming_at_a_crash_is_marked_interrupted_on_restart(db_url: str) -> None:
    store = await Store.open(db_url)
    turn_id = await store.add_assistant_turn("c", AssistantRecord("half an ans", "m", "streaming"), 3)
    await store.close()  # the process dies here, mid-reply
    reopened = await Store.open(db_url)
    turns, _ = await reopened.recent_turns("c", 100)
    assert [(t.id, t.content, t.outcome) for t in turns] == [(turn_id, "half an ans", "interrupted")]
    await reopened.close()


async def test_event_claims_are_durable_and_single(db_url: str) -> None:
    store = await Store.open(db_url)
    assert await store.claim_event("slack", "Ev1")
    assert not await store.claim_event("slack", "Ev1")
    assert await store.claim_event("discord", "Ev1")
    await store.close()
    reopened = await Store.open(db_url)
    assert not await reopened.claim_event("slack", "Ev1")
    await reopened.close()


async def test_meta_values_and_setting_updates(db_url: str) -> None:
    store = await Store.open(db_url)
    assert await store.get_meta("hash") is None
    await store.set_meta("hash", "one")
    await store.set_meta("hash", "two")
    assert await store.get_meta("hash") == "two"
    await store.set_setting("c", "search_mode", "on", "u")
    await store.set_setting("c", "search_mode", None, "u")
    assert (await store.settings(["c"]))[0]["search_mode"] is None
    with pytest.raises(ValueError):
        await store.set_setting("c", "password", "x", "u")
    await store.close()
