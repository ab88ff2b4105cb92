"""A deadline for one stream's reads that moves forward with every read without a timer per read.

`asyncio.timeout()` around each read schedules and cancels a timer for every SSE event: at a thousand
streams that is tens of thousands of timers a second. Here one timer per stream fires at the earliest
deadline it was armed for; if the deadline has moved on since, it re-arms itself once for the new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Deadline:
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Task[object] | None = None
        self._expired = False

    async def wait(self, awaitable: Awaitable[T], deadline: float) -> T:
        """`awaitable`'s result, or TimeoutError once the loop's clock passes `deadline` first."""
        self._deadline = deadline
        if self._timer is None or self._timer.when() > deadline:
            self._arm(deadline)
        task = asyncio.current_task()
        assert task is not None
        self._waiter = task
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if task.uncancel() == 0:  # cancelled by the deadline alone, not from outside as well
                    raise TimeoutError from None
            raise
        finally:
            self._waiter = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._waiter is None:  # nobody is reading now; the next read arms it again
            return
        if self._loop.time() < self._deadline:
            self._arm(self._deadline)
            return
        self._expired = True
        self._waiter.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
