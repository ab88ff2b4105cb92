"""One pacing policy for every platform: how often a streaming reply may be re-rendered.

A reply shows its first text at once, then re-renders no sooner than the surface's `min_interval`, and
only while every request bucket the render draws on (a Discord channel, one Slack method in a workspace)
has room. Intermediate texts that went stale while waiting are skipped: only the newest text is ever
sent. The final text is always rendered, as soon as the budget allows: the interval spaces the edits
in between, so a reply that ends is shown whole without waiting it out, and one that ends before its
first render is shown once, complete. The edits between a reply's first
and final texts leave one slot of a bucket free for the final text of every reply whose final draws on
it and one for the next reply's first text, so under contention replies start and finish first and
animate second. Renders waiting for one bucket go in order of need: a reply that shows nothing yet, then
a finished reply's final text, then anyone's edits. A surface that has another way to show a reply (a
Slack stream or a plain message) can ask `Pacer.has_room` and take the other way rather than queue.

A final reserves what rendering its text will call, as a surface that pages long text tells
(`PagedSurface.final_cost`): a Slack final that fits the reply's message is one chat.update and waits
for no channel's post slot. A render that changes path midway (a Slack stream refused, continued by a
post) takes the new request's slot (`Pacer.take`) before it calls, so that renders refused together do
not all make it.

On PostgreSQL the buckets are shared by every instance (`bot/rate_slots.py`): a render takes its slots
in the database too, by the database's clock, and each answer updates this instance's copy of the
bucket with what all of them spent, so the waiting and the room above see the whole budget. When the
database has no room the render waits and looks again; when it fails, this instance paces alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from bot.models import RateLimit, Surface
from bot.rate_slots import SharedSlots, Taken

log = logging.getLogger(__name__)

# Requests reach the platform a little later than we send them; keep that much clear of the window edge.
LATENCY_MARGIN = 0.15
# What a render is, for who goes first when renders wait for one bucket.
FIRST_TEXT, FINAL_TEXT, EDIT = 0, 1, 2


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


@runtime_checkable
class PagedSurface(Protocol):
    """A surface whose final render's requests depend on its text (one that spreads long text over
    several messages): it says which requests rendering `text` as the final would make, if all succeed."""

    def final_cost(self, text: str) -> Sequence[RateLimit]: ...


def final_cost(surface: Surface, text: str) -> Sequence[RateLimit]:
    """The requests the final render of `text` makes: as the surface tells, else as its budget says."""
    if isinstance(surface, PagedSurface):
        return surface.final_cost(text)
    return surface.budget.cost(final=True)


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class RequestBucket:
    """At most `capacity` requests in any `window` seconds: a sliding window, so fixed windows hold too.

    `replies` counts the replies whose final text will draw on the bucket; each is owed a slot for it."""

    def __init__(self, capacity: int, window: float, key: str = "") -> None:
        self.key = key  # the budget's name among the shared ones
        self.capacity = capacity
        self.window = window + LATENCY_MARGIN
        self.replies = 0
        self._sent: deque[float] = deque()
        self._held: deque[float] = deque()  # slots taken for requests no render reserved, not yet reported
        # Renders waiting for this bucket, by rank: FIRST_TEXT before FINAL_TEXT before EDIT.
        self._waiting: dict[object, int] = {}

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()

    def wait_time(
        self, now: float, *, count: int = 1, rank: int = FIRST_TEXT, waiter: object = None
    ) -> float:
        """Seconds until `count` requests of this rank may go.

        A reply's first and final texts may use the whole bucket; the edits between them leave a slot for
        every reply's final text and one for the first text of a reply yet to come (but may always use
        one). Renders of a better rank waiting for the bucket go first: a reply that shows nothing yet
        before a finished one's final text, both before anyone's edits."""
        self._expire(now)
        usable = self.usable(rank)
        ahead = sum(1 for other, its in self._waiting.items() if its < rank and other is not waiter)
        # (More over than were sent: the slots free now go to the renders ahead; look again once they
        # took them.)
        return self._freed_in(now, len(self._sent) + min(count, usable) + ahead - usable)

    def usable(self, rank: int) -> int:
        """How many of the window's slots renders of this rank may use."""
        return self.capacity if rank != EDIT else max(1, self.capacity - self.replies - 1)

    def mirror(self, now: float, ages: Iterable[float]) -> None:
        """Take the shared budget's requests (how many seconds ago each went) as this bucket's own."""
        self._sent = deque(sorted(now - age for age in ages))
        self._expire(now)

    def wait(self, waiter: object, rank: int) -> None:
        self._waiting[waiter] = rank

    def done_waiting(self, waiter: object) -> None:
        self._waiting.pop(waiter, None)

    def has_room(self, now: float, count: int) -> bool:
        """Whether `count` requests fit now beside the final text owed to every reply counted here."""
        self._expire(now)
        return len(self._sent) + self.replies + count <= self.capacity

    def room_in(self, now: float) -> float:
        """Seconds until `has_room(now, 1)`; a margin when the final texts owed fill the bucket (each
        frees its slot once shown)."""
        self._expire(now)
        return self._freed_in(now, len(self._sent) + self.replies + 1 - self.capacity)

    def _freed_in(self, now: float, over: int) -> float:
        """Seconds until the oldest `over` requests have left the window (0 for none; a margin, to look
        again, when that is more than were sent: the rest are slots others hold)."""
        if over <= 0:
            return 0.0
        if over > len(self._sent):
            return LATENCY_MARGIN
        return self._sent[over - 1] + self.window - now

    def charge(self, now: float, count: int = 1) -> None:
        self._sent.extend([now] * count)

    def hold(self, now: float) -> None:
        """Take a slot for a request no render reserved; the render reports it afterwards."""
        self.charge(now)
        self._held.append(now)

    def charge_reported(self, now: float) -> None:
        """Count a request a render reported beyond its slots, unless a slot was held for it (and is
        still in the window)."""
        while self._held:
            if self._held.popleft() in self._sent:
                return
        self.charge(now)

    def refund(self, at: float) -> None:
        """Give back a slot reserved at `at` that the render did not use (unless it left the window
        while the render took its time)."""
        if at in self._sent:
            self._sent.remove(at)


class Pacer:
    """Engine-wide: hands each reply a renderer and keeps the buckets replies share."""

    def __init__(self, clock: Clock, shared: SharedSlots | None = None) -> None:
        self.clock = clock
        self.shared = shared
        self._buckets: dict[str, RequestBucket] = {}

    def renderer(
        self, surface: Surface, on_render: Callable[[], Awaitable[None]] | None = None
    ) -> PacedRenderer:
        """`on_render` runs after each render (the engine records where the reply shows)."""
        return PacedRenderer(surface, self, on_render)

    def bucket_for(self, limit: RateLimit) -> RequestBucket:
        bucket = self._buckets.get(limit.key)
        if bucket is None:
            bucket = self._buckets[limit.key] = RequestBucket(limit.capacity, limit.window, limit.key)
        return bucket

    def has_room(self, limits: Iterable[RateLimit]) -> bool:
        """Whether these requests could go now, leaving every reply's final text its slot."""
        now = self.clock.now()
        wanted = Counter(limits)
        return all(self.bucket_for(limit).has_room(now, count) for limit, count in wanted.items())

    async def take(self, limits: Sequence[RateLimit], *, wait: bool = False) -> bool:
        """Take slots now for requests a render makes beyond those it reserved (a Slack stream refused
        midway goes on by a post), so that renders refused at once cannot all make them; False, taking
        none, when they do not fit beside every reply's final text. With `wait` (a final text, which is
        always shown) it waits for them instead. The render reports them as usual, and each is counted
        once."""
        while not self.has_room(limits):
            if not wait:
                return False
            now = self.clock.now()
            await self.clock.sleep(max(self.bucket_for(limit).room_in(now) for limit in limits))
        now = self.clock.now()
        for limit in limits:
            self.bucket_for(limit).hold(now)
        return True


class PacedRenderer:
    """Renders one reply through its surface; `update` never blocks the token stream.

    The surface's budget is read before every render: a reply can change path midway (a Slack stream
    that expires continues by chat.update, which has a budget of its own), and its final text can draw
    on other buckets than its edits (chat.stopStream, chat.appendStream)."""

    def __init__(
        self, surface: Surface, pacer: Pacer, on_render: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._surface = surface
        self._pacer = pacer
        self._on_render = on_render
        self._clock = pacer.clock
        self._latest = ""
        self._shown = ""
        self._final = False
        self._last_render: float | None = None
        self._wake = asyncio.Event()
        self._pausing = False  # the render task sleeps out an intermediate's interval or budget
        self._interrupted = False  # and `finish` cancelled that sleep
        self._task: asyncio.Task[None] | None = None
        self._claimed: set[RequestBucket] = set()  # the buckets that count this reply among their replies
        self._waiting_at: set[RequestBucket] = set()  # the buckets this reply waits in line at
        self._taken: list[tuple[RequestBucket, Taken]] = []  # the render's slots in the shared buckets
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
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        elif self._pausing and not self._interrupted:  # an intermediate's pause: the final need not wait
            self._interrupted = True
            self._task.cancel()
        self._wake.set()
        await asyncio.shield(self._task)

    def _wait_time(self) -> float:
        """Seconds until the next render may go; meanwhile this reply waits in line at its buckets."""
        now = self._clock.now()
        budget = self._surface.budget
        wait = 0.0
        if self._last_render is not None and not self._final:
            wait = self._last_render + budget.min_interval - now
        self._claim(budget.owed_to_final())
        rank = self._rank()
        buckets = Counter(self._pacer.bucket_for(limit) for limit in self._cost(self._final))
        self._stop_waiting()
        for bucket, count in buckets.items():
            wait = max(wait, bucket.wait_time(now, count=count, rank=rank, waiter=self))
        if wait > 0:
            for bucket in buckets:
                bucket.wait(self, rank)
            self._waiting_at = set(buckets)
        return wait

    def _cost(self, final: bool) -> Sequence[RateLimit]:
        """The requests the next render makes; for the final, those its text needs."""
        return final_cost(self._surface, self._latest) if final else self._surface.budget.cost(final=False)

    def _rank(self) -> int:
        return FIRST_TEXT if self._last_render is None else FINAL_TEXT if self._final else EDIT

    def _stop_waiting(self) -> None:
        for bucket in self._waiting_at:
            bucket.done_waiting(self)
        self._waiting_at = set()

    def _claim(self, limits: Iterable[RateLimit]) -> None:
        """Count this reply among the replies of the buckets its final text will draw on, and only those."""
        buckets = {self._pacer.bucket_for(limit) for limit in limits}
        for bucket in self._claimed - buckets:
            bucket.replies -= 1
        for bucket in buckets - self._claimed:
            bucket.replies += 1
        self._claimed = buckets

    def _reserve(self, final: bool, now: float) -> list[RequestBucket]:
        """Take the render's slots before awaiting it, so concurrent replies cannot both take the last."""
        reserved = [self._pacer.bucket_for(limit) for limit in self._cost(final)]
        for bucket in reserved:
            bucket.charge(now)
        return reserved

    async def _take_shared(self, reserved: list[RequestBucket], rank: int) -> bool:
        """Take the render's slots in the shared buckets too; False, with the slots taken meanwhile given
        back, when one had no room (the bucket's copy now says how long to wait)."""
        self._taken = []
        shared = self._pacer.shared
        if shared is None:
            return True
        for bucket in reserved:
            keep = bucket.capacity - bucket.usable(rank)
            taken = await shared.take(bucket.key, bucket.capacity, bucket.window, keep)
            if taken is None:  # the database failed: this instance's own bucket paces the render
                continue
            bucket.mirror(self._clock.now(), taken.ages)
            if taken.slot is None:
                for other, its in self._taken:
                    await shared.give_back(other.key, its)
                self._taken = []
                return False
            self._taken.append((bucket, taken))
        return True

    async def _give_back(self, bucket: RequestBucket, at: float) -> None:
        bucket.refund(at)
        for index, (other, taken) in enumerate(self._taken):
            if other is bucket and self._pacer.shared is not None:
                del self._taken[index]
                await self._pacer.shared.give_back(bucket.key, taken)
                return

    async def _charge(self, limit: RateLimit) -> None:
        """Count a request the render made beyond its slots, here and in the shared bucket."""
        bucket = self._pacer.bucket_for(limit)
        bucket.charge_reported(self._clock.now())
        if self._pacer.shared is not None:
            taken = await self._pacer.shared.take(bucket.key, bucket.capacity, bucket.window)
            if taken is not None:
                bucket.mirror(self._clock.now(), taken.ages)

    async def _settle(
        self, reserved: list[RequestBucket], at: float, spent: int | Sequence[RateLimit]
    ) -> None:
        """Give back the slots a render did not use and charge the requests it made beyond them: to the
        buckets it names, or (given only a count) to the edits of the path the surface is on now."""
        if isinstance(spent, int):
            path = self._surface.budget.cost(final=False)
            extra = [path[0]] * (spent - len(reserved)) if path else []
            unused = reserved[spent:]
        else:
            unused = list(reserved)
            extra = []
            for limit in spent:
                bucket = self._pacer.bucket_for(limit)
                if bucket in unused:
                    unused.remove(bucket)
                else:
                    extra.append(limit)
        for bucket in unused:
            await self._give_back(bucket, at)
        for limit in extra:
            await self._charge(limit)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake for the final text: it may use the slot kept for it, an intermediate may not.

        The render task sleeps itself and `finish` cancels that sleep: with a thousand replies streaming,
        each pass of the event loop takes a few hundred milliseconds, and a sleep in a task of its own,
        raced against the final text in `asyncio.wait`, took three passes to wake the render where this
        takes one."""
        if self._final:
            await self._clock.sleep(seconds)
            return
        self._pausing = True
        try:
            await self._clock.sleep(seconds)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._interrupted or task is None or task.uncancel() > 0:
                raise  # cancelled from outside as well
        finally:
            self._pausing = self._interrupted = False

    async def _run(self) -> None:
        try:
            await self._render_until_final()
        finally:
            self._stop_waiting()
            self._claim(())
            # Nothing renders after this, and the callback is most often a method of the reply that
            # holds this renderer: let go of it, so the reply is freed when done with rather than left
            # to the garbage collector.
            self._on_render = None

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
            if final:  # the slots it reserves now are the ones kept for its final: count them once
                self._claim(())
            reserved = self._reserve(final, now)
            if not await self._take_shared(reserved, self._rank()):
                for bucket in reserved:
                    bucket.refund(now)
                self._wake.set()  # the same text, or a newer one, once there is room
                if self._wait_time() <= 0:  # room in sight, but other instances are taking it: look again
                    await self._pause(LATENCY_MARGIN / 3)
                continue
            try:
                spent = await self._surface.render(text, final=final)
            except Exception:
                log.exception("rendering a reply failed; the next render will try again")
                spent = len(reserved)
            # The interval runs from when the platform accepted this render: one it held back (a 429
            # retried inside the client) must not be followed at once by the next.
            self._last_render = self._clock.now()
            await self._settle(reserved, now, spent)
            self._shown = text
            self.renders += 1
            if self.first_render_at is None:
                self.first_render_at = now
            if self._on_render is not None:
                await self._on_render()
            if final:
                return
