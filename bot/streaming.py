"""One pacing policy for every platform: how often a streaming reply may be re-rendered.

A reply shows its first text at once, then re-renders no sooner than the surface's `min_interval`, and
only while the shared request bucket (a Discord channel, a Slack workspace) has room. Intermediate texts
that went stale while waiting are skipped: only the newest text is ever sent. The final text is always
rendered, as soon as the budget allows. The edits between a reply's first and final texts leave one slot
of the bucket free for the final text of every reply drawing on it and one for the next reply's first
text, so under contention replies start and finish first and animate second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Protocol

from bot.models import RenderBudget, Surface

log = logging.getLogger(__name__)

# Requests reach the platform a little later than we send them; keep that much clear of the window edge.
LATENCY_MARGIN = 0.15


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class RequestBucket:
    """At most `capacity` requests in any `window` seconds: a sliding window, so fixed windows hold too.

    `replies` counts the replies drawing on the bucket; each is owed a slot for its final text."""

    def __init__(self, capacity: int, window: float) -> None:
        self.capacity = capacity
        self.window = window + LATENCY_MARGIN
        self.replies = 0
        self._sent: deque[float] = deque()

    def wait_time(self, now: float, *, first_or_final: bool = True) -> float:
        """Seconds until a request may go. A reply's first and final texts may use the whole bucket; the
        edits between them leave a slot for every reply's final text and one for the first text of a reply
        yet to come (but may always use one)."""
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        usable = self.capacity if first_or_final else max(1, self.capacity - self.replies - 1)
        if len(self._sent) < usable:
            return 0.0
        return self._sent[-usable] + self.window - now

    def charge(self, now: float, count: int = 1) -> None:
        self._sent.extend([now] * count)

    def refund(self, at: float) -> None:
        """Give back a slot reserved at `at` that the render did not use."""
        self._sent.remove(at)


class Pacer:
    """Engine-wide: hands each reply a renderer and keeps the buckets replies share."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._buckets: dict[str, RequestBucket] = {}

    def renderer(self, surface: Surface) -> PacedRenderer:
        return PacedRenderer(surface, self)

    def bucket_for(self, budget: RenderBudget) -> RequestBucket | None:
        if not budget.bucket or budget.capacity <= 0:
            return None
        bucket = self._buckets.get(budget.bucket)
        if bucket is None:
            bucket = self._buckets[budget.bucket] = RequestBucket(budget.capacity, budget.window)
        return bucket


class PacedRenderer:
    """Renders one reply through its surface; `update` never blocks the token stream.

    The surface's budget is read before every render: a reply can change path midway (a Slack stream
    that expires continues by chat.update, which has a budget of its own)."""

    def __init__(self, surface: Surface, pacer: Pacer) -> None:
        self._surface = surface
        self._pacer = pacer
        self._clock = pacer.clock
        self._latest = ""
        self._shown = ""
        self._final = False
        self._last_render: float | None = None
        self._wake = asyncio.Event()
        self._finishing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._claimed: RequestBucket | None = None  # the bucket that counts this reply among its replies
        self.renders = 0
        self.first_render_at: float | None = None

    def update(self, text: str) -> None:
        self._latest = text
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        self._wake.set()

    async def finish(self, text: str) -> None:
        """Render `text` as final, waiting for the budget; returns once it has been shown (or failed)."""
        self._latest = text
        self._final = True
        self._finishing.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        self._wake.set()
        await asyncio.shield(self._task)

    def _wait_time(self) -> float:
        now = self._clock.now()
        budget = self._surface.budget
        wait = 0.0
        if self._last_render is not None:
            wait = self._last_render + budget.min_interval - now
        bucket = self._pacer.bucket_for(budget)
        self._claim(bucket)
        if bucket is not None:
            first_or_final = self._final or self._last_render is None
            wait = max(wait, bucket.wait_time(now, first_or_final=first_or_final))
        return wait

    def _claim(self, bucket: RequestBucket | None) -> None:
        if bucket is self._claimed:
            return
        if self._claimed is not None:
            self._claimed.replies -= 1
        if bucket is not None:
            bucket.replies += 1
        self._claimed = bucket

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake for the final text: it may use the slot kept for it, an intermediate may not."""
        if self._final:
            await self._clock.sleep(seconds)
            return
        sleeping = asyncio.ensure_future(self._clock.sleep(seconds))
        finishing = asyncio.ensure_future(self._finishing.wait())
        try:
            await asyncio.wait({sleeping, finishing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            finishing.cancel()

    async def _run(self) -> None:
        try:
            await self._render_until_final()
        finally:
            self._claim(None)

    async def _render_until_final(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (wait := self._wait_time()) > 0:
                await self._pause(wait)
            final = self._final
            text = self._latest
            if not final and text == self._shown:
                continue
            now = self._clock.now()
            # Reserve the request before awaiting, so concurrent replies cannot both take the last slot.
            if (reserved := self._pacer.bucket_for(self._surface.budget)) is not None:
                reserved.charge(now)
            try:
                spent = await self._surface.render(text, final=final)
            except Exception:
                log.exception("rendering a reply failed; the next render will try again")
                spent = 1
            # The interval runs from when the platform accepted this render: one it held back (a 429
            # retried inside the client) must not be followed at once by the next.
            self._last_render = self._clock.now()
            if spent == 0 and reserved is not None:
                reserved.refund(now)
            # Requests beyond the reserved one go to the budget of the path the surface is on now.
            if spent > 1 and (bucket := self._pacer.bucket_for(self._surface.budget)) is not None:
                bucket.charge(self._clock.now(), spent - 1)
            self._shown = text
            self.renders += 1
            if self.first_render_at is None:
                self.first_render_at = now
            if final:
                return
