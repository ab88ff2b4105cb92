"""Checkpoints of streaming replies, batched per interval: what is saved, when, and what a failure does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from bot.checkpoints import CHECKPOINT_SECONDS, Checkpoints
from bot.store import AssistantRecord, Checkpoint, Store
from tests.support.asking import ADA, CHANNEL, msg
from tests.support.clock import FakeClock

pytestmark = pytest.mark.both_databases


async def streaming_turns(store: Store, count: int) -> list[int]:
    turns = []
    for index in range(count):
        entry = await store.accept(msg(f"question {index}"), None, f"question {index}", 2)
        assert entry is not None
        record = AssistantRecord("", "m", "streaming")
        turns.append(await store.start_reply(str(CHANNEL), entry.turn_id, ADA.id, record, 0))
    return turns


async def saved(store: Store) -> dict[int, str]:
    return {reply.turn_id: reply.content for reply in await store.streaming(CHANNEL.platform)}


async def test_one_transaction_per_interval_saves_the_newest_text_of_each_reply(database_url: str) -> None:
    store = await Store.open(database_url)
    one, two = await streaming_turns(store, 2)
    batches: list[Sequence[Checkpoint]] = []
    save = store.save_checkpoints

    async def counted(checkpoints: Sequence[Checkpoint]) -> None:
        await save(checkpoints)
        batches.append(checkpoints)

    store.save_checkpoints = counted  # type: ignore[method-assign]
    clock = FakeClock()
    checkpoints = Checkpoints(store, clock)
    for text in ("a", "ab", "abc"):
        checkpoints.note(one, text, "m")
    checkpoints.note(two, "x", "m")
    await clock.advance(CHECKPOINT_SECONDS - 0.1)
    assert batches == [] and await saved(store) == {one: "", two: ""}  # nothing before the interval
    await clock.advance(0.1)
    await until_batches(batches, 1)
    assert [sorted(c.content for c in batch) for batch in batches] == [["abc", "x"]]
    assert await saved(store) == {one: "abc", two: "x"}
    await clock.advance(CHECKPOINT_SECONDS * 3)  # nothing grew: nothing is written
    assert len(batches) == 1 and clock.sleepers == 0
    checkpoints.note(two, "xy", "m")  # a reply that grows again starts the next batch
    await clock.advance(CHECKPOINT_SECONDS)
    await until_batches(batches, 2)
    assert await saved(store) == {one: "abc", two: "xy"}
    await checkpoints.aclose()
    await store.close()


async def test_a_failed_batch_is_retried_but_not_for_a_reply_finished_meanwhile(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = await Store.open(database_url)
    going, finishing = await streaming_turns(store, 2)
    clock = FakeClock()
    checkpoints = Checkpoints(store, clock)
    attempts: list[list[int]] = []
    written: list[list[int]] = []
    save = store.save_checkpoints
    refused = asyncio.Event()
    release = asyncio.Event()

    async def refused_once(batch: Sequence[Checkpoint]) -> None:
        attempts.append(sorted(c.turn_id for c in batch))
        if len(attempts) == 1:
            refused.set()
            await release.wait()
            raise ConnectionResetError("the database went away")
        await save(batch)
        written.append(attempts[-1])

    store.save_checkpoints = refused_once  # type: ignore[method-assign]
    checkpoints.note(going, "so", "m")
    checkpoints.note(finishing, "nearly", "m")
    await clock.advance(CHECKPOINT_SECONDS)
    await refused.wait()
    checkpoints.forget(finishing)  # its final record is being written while the batch fails
    checkpoints.note(going, "so far", "m")  # newer text than the batch holds
    release.set()
    await until(lambda: "could not save 2 streaming replies so far; trying again" in caplog.text)
    await clock.advance(CHECKPOINT_SECONDS)
    await until_batches(written, 1)
    assert attempts == [sorted([going, finishing]), [going]]
    assert (await saved(store))[going] == "so far"
    await checkpoints.aclose()
    await checkpoints.aclose()  # closing again does nothing
    await store.close()


async def until_batches(batches: Sequence[object], count: int) -> None:
    await until(lambda: len(batches) >= count)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)
