"""bot/batches.py: every request made while a batch is out goes into the next, a failed batch fails each
of its requests, and a cancelled requester is left out (before its batch goes) or gets nothing (while it
is out)."""

from __future__ import annotations

import asyncio

import pytest

from bot.batches import Batches


class Sender:
    """Sends each batch when the test lets it, answering each request with its double."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.go = asyncio.Event()
        self.out = asyncio.Event()
        self.failing = False

    async def __call__(self, batch: list[int]) -> list[int]:
        self.batches.append(batch)
        self.out.set()
        await self.go.wait()
        if self.failing:
            raise RuntimeError("the statement failed")
        return [2 * n for n in batch]


async def test_requests_made_while_a_batch_is_out_go_together_into_the_next() -> None:
    sender = Sender()
    batches = Batches(sender, "test")
    first = [asyncio.create_task(batches(n)) for n in (1, 2, 3)]
    await sender.out.wait()
    later = [asyncio.create_task(batches(n)) for n in (4, 5)]
    await asyncio.sleep(0)  # asked, while the first batch is out
    sender.go.set()
    assert await asyncio.gather(*first, *later) == [2, 4, 6, 8, 10]
    assert sender.batches == [[1, 2, 3], [4, 5]]


async def test_a_failed_batch_fails_each_of_its_requests_and_the_next_is_sent() -> None:
    sender = Sender()
    sender.failing = True
    sender.go.set()
    batches = Batches(sender, "test")
    failed = await asyncio.gather(*(batches(n) for n in (1, 2)), return_exceptions=True)
    assert [str(error) for error in failed] == ["the statement failed"] * 2
    sender.failing = False
    assert await batches(3) == 6
    assert sender.batches == [[1, 2], [3]]


async def test_a_cancelled_requester_is_left_out_or_gets_nothing() -> None:
    sender = Sender()
    batches = Batches(sender, "test")
    gone = asyncio.create_task(batches(1))
    out = asyncio.create_task(batches(2))
    kept = asyncio.create_task(batches(3))
    await asyncio.sleep(0)  # all three asked, the batch not yet sent
    gone.cancel()
    await sender.out.wait()
    out.cancel()  # while its batch is out
    sender.go.set()
    assert await kept == 6
    for task in (gone, out):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sender.batches == [[2, 3]]
    assert await batches(4) == 8  # the sender goes on
