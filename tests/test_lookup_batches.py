"""A burst's look-ups on PostgreSQL (bot/lookups.py's `LookUpBatches`): every look-up asked for while a
batch is out goes into the next, read in one statement per kind, and each answer is what that look-up
alone would have read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine as DatabaseEngine
from sqlalchemy.exc import ProgrammingError

from bot.budgets import override_targets
from bot.lookups import LookUp, LookUpBatches, Lookups, look_up
from bot.models import ConversationKey
from bot.store import AssistantRecord, Store
from bot.windows import Windows
from tests.support.asking import msg

on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

KEYS = [ConversationKey("test", f"c{n}") for n in range(6)] + [ConversationKey("test", "c0", "t1")]


@contextmanager
def statements_sent() -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to the database meanwhile, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def note(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        sent.append((statement, parameters))

    event.listen(DatabaseEngine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(DatabaseEngine, "before_cursor_execute", note)


def plain(found: Lookups) -> tuple[Any, ...]:
    """A look-up's answer with its rows as plain values (a batch's rows carry more columns)."""
    ahead = found.window
    assert ahead is not None
    read = ahead.read
    rows = [
        (row.id, row.role, row.content, row.tokens, row.outcome, row.answers, row.hidden) for row in read.rows
    ]
    return (
        found.settings,
        found.budget_overrides,
        found.summary,
        (ahead.window, ahead.version, read.inserted, read.changed, read.complete, rows),
    )


async def stored(store: Store) -> Windows:
    """Settings, skill modes, budgets, summaries and turns that differ between the conversations, and a
    window held for two of them (the others are read as new)."""
    await store.set_setting(str(KEYS[0]), "model", "openrouter/x", "u")
    await store.set_setting(str(KEYS[1]), "system_prompt", "Be brief.", "u")
    await store.set_skill_mode(str(KEYS[1]), "read_page", "off", "u")
    await store.set_skill_mode(str(KEYS[0]), "web_search", "auto", "u")  # the thread inherits it
    scope, target = override_targets(msg("hi", KEYS[2], server_id="S1"))[0]
    await store.set_budget(scope, target, "daily", "tokens", 5, "u")
    await store.set_summary(str(KEYS[3]), "They talked.", 1, "m")
    for key in KEYS[:5]:
        for n in range(3 + KEYS.index(key)):
            entry = await store.accept(msg(f"q{n}", key), None, f"q{n}", 2)
            assert entry is not None
            await store.start_reply(str(key), entry.turn_id, "u-ada", AssistantRecord(f"a{n}", "m", "ok"), 2)
    windows = Windows(store, 2**20)
    for key in KEYS[:2]:
        await windows.recall(str(key), 10_000)
    streaming = await store.accept(msg("new", KEYS[0]), None, "new", 2)
    assert streaming is not None
    await store.start_reply(
        str(KEYS[0]), streaming.turn_id, "u-ada", AssistantRecord("", "m", "streaming"), 0
    )
    return windows


@on_postgres
async def test_look_ups_asked_together_are_read_in_one_hop_each_as_it_alone_would_be(
    database_url: str,
) -> None:
    store = await Store.open(database_url)
    try:
        windows = await stored(store)
        batches = LookUpBatches(store)
        asked = [(key, override_targets(msg("hi", key, server_id="S1"))) for key in KEYS]
        alone = [
            await store.read(
                partial(look_up, key=key, budget_targets=targets, window=windows.read_ahead(str(key)))
            )
            for key, targets in asked
        ]
        assert alone[0].settings[0][0]["model"] == "openrouter/x"
        assert alone[6].settings[1] == [{}, {"web_search": "auto"}]  # the thread's, then its channel's
        assert alone[2].budget_overrides and alone[3].summary == ("They talked.", 1)
        assert [found.window.window is not None for found in alone if found.window] == [True, True] + [
            False
        ] * 5
        with statements_sent() as sent:
            together = await asyncio.gather(
                *(batches(LookUp(key, targets, windows.read_ahead(str(key)))) for key, targets in asked)
            )
        assert [plain(found) for found in together] == [plain(found) for found in alone]
        # One hop: the settings, the skill modes, the budgets, the summaries, the windows not held and
        # those held, one statement each for all seven.
        assert len(sent) == 6
    finally:
        await store.close()


@on_postgres
async def test_a_batch_whose_statement_fails_fails_each_of_its_look_ups_then_the_next_reads(
    database_url: str,
) -> None:
    store = await Store.open(database_url)
    try:
        windows = Windows(store, 2**20)
        batches = LookUpBatches(store)
        await store.write(lambda conn: conn.execute(text("ALTER TABLE summaries RENAME TO away")))
        asked = [LookUp(key, [], windows.read_ahead(str(key))) for key in KEYS[:3]]
        failed = await asyncio.gather(*map(batches, asked), return_exceptions=True)
        assert [type(error) for error in failed] == [ProgrammingError] * 3
        await store.write(lambda conn: conn.execute(text("ALTER TABLE away RENAME TO summaries")))
        found = await asyncio.gather(*map(batches, asked))
        assert [lookups.summary for lookups in found] == [None] * 3
    finally:
        await store.close()


@on_postgres
async def test_a_cancelled_look_up_is_left_out_and_the_others_are_answered(database_url: str) -> None:
    """One cancelled before its batch is sent is not asked for; one cancelled while its batch is out gets
    nothing, and the look-ups asked for meanwhile go out in the next batch."""
    store = await Store.open(database_url)
    try:
        await store.set_summary(str(KEYS[1]), "Kept.", 1, "m")
        windows = Windows(store, 2**20)
        batches = LookUpBatches(store)
        gone = asyncio.create_task(batches(LookUp(KEYS[0], [], None)))
        first = asyncio.create_task(batches(LookUp(KEYS[1], [], windows.read_ahead(str(KEYS[1])))))
        await asyncio.sleep(0)  # both asked; the batch is not sent yet
        gone.cancel()
        later: list[asyncio.Task[Lookups]] = []

        def while_out(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if "summaries" in statement and not later:  # the first batch is out
                first.cancel()
                later.append(asyncio.create_task(batches(LookUp(KEYS[1], [], None))))

        with statements_sent() as sent:
            event.listen(DatabaseEngine, "before_cursor_execute", while_out)
            try:
                with pytest.raises(asyncio.CancelledError):
                    await first
                assert (await later[0]).summary == ("Kept.", 1)
            finally:
                event.remove(DatabaseEngine, "before_cursor_execute", while_out)
        with pytest.raises(asyncio.CancelledError):
            await gone
        asked = [parameters for statement, parameters in sent if "FROM summaries" in statement]
        assert [list(values[0]) for values in asked] == [[str(KEYS[1])], [str(KEYS[1])]]  # never KEYS[0]
    finally:
        await store.close()
