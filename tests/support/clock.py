"""A virtual clock for pacing tests: time moves only when the test says so, and sleepers wake in order."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    @property
    def sleepers(self) -> int:
        """Tasks asleep on this clock now."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    @property
    def wakes(self) -> list[float]:
        """When the tasks asleep on this clock wake, soonest first."""
        return sorted(wake for wake, _, future in self._sleepers if not future.done())

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(seconds, 0.0), next(self._seq), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own moment and letting it run before the next."""
        target = self.t + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            wake, _, future = heapq.heappop(self._sleepers)
            self.t = max(self.t, wake)
            if not future.done():
                future.set_result(None)
            await settle()
        self.t = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until the loop is quiet (no I/O involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
