"""The shared pacing policy, driven by a virtual clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.compare import Labelled
from bot.models import RateLimit, RenderBudget
from bot.streaming import EDIT, LATENCY_MARGIN, PacedRenderer, Pacer, RequestBucket
from tests.support.clock import FakeClock, settle


class RecordingSurface:
    def __init__(
        self, clock: FakeClock, budget: RenderBudget, spend: int | list[RateLimit] = 1, fail_first: int = 0
    ) -> None:
        self.clock = clock
        self.budget = budget
        self.spend = spend
        self.fail_first = fail_first
        self.renders: list[tuple[float, str, bool]] = []

    async def start(self) -> None:
        return None

    async def render(self, text: str, *, final: bool) -> int | list[RateLimit]:
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("platform said no")
        self.renders.append((self.clock.now(), text, final))
        return self.spend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_first_text_renders_at_once_then_at_most_once_per_interval(clock: FakeClock) -> None:
    surface = RecordingSurface(clock, RenderBudget(min_interval=1.0))
    renderer = Pacer(clock).renderer(surface)
    renderer.update("a")
    await settle()
    assert surface.renders == [(1000.0, "a", False)]
    renderer.update("ab")
    renderer.update("abc")  # "ab" goes stale before it may be shown
    await clock.advance(0.5)
    assert len(surface.renders) == 1
    await clock.advance(0.6)
    assert [text for _, text, _ in surface.renders] == ["a", "abc"]
    assert surface.renders[1][0] - surface.renders[0][0] == pytest.approx(1.0)


async def test_final_text_goes_at_once_when_the_budget_has_room(clock: FakeClock) -> None:
    """The interval spaces intermediate edits; a reply that ended is shown whole without waiting it out."""
    surface = RecordingSurface(clock, RenderBudget(min_interval=1.0, bucket="b", capacity=5, window=5.0))
    renderer = Pacer(clock).renderer(surface)
    renderer.update("partial")
    await settle()
    await clock.advance(0.2)
    renderer.update("partial and more")  # an edit this soon waits for the interval
    await settle()
    assert len(surface.renders) == 1
    finishing = asyncio.create_task(renderer.finish("partial and done"))
    await settle()
    assert finishing.done()
    assert surface.renders == [(1000.0, "partial", False), (1000.2, "partial and done", True)]


async def test_final_text_waits_for_the_bucket_not_the_interval(clock: FakeClock) -> None:
    budget = RenderBudget(min_interval=1.0, bucket="b", capacity=2, window=5.0)
    pacer = Pacer(clock)
    pacer.bucket_for(RateLimit("b", 2, 5.0)).charge(clock.now())  # another reply's request
    surface = RecordingSurface(clock, budget)
    renderer = pacer.renderer(surface)
    renderer.update("partial")
    await settle()
    assert len(surface.renders) == 1  # the bucket is now full
    finishing = asyncio.create_task(renderer.finish("partial and done"))
    await clock.advance(5.0)
    assert not finishing.done()
    await clock.advance(LATENCY_MARGIN + 0.01)
    await finishing
    assert surface.renders[-1][1:] == ("partial and done", True)
    assert surface.renders[-1][0] == pytest.approx(1000.0 + 5.0 + LATENCY_MARGIN)


async def test_a_reply_that_ends_before_its_first_render_is_shown_once_complete(clock: FakeClock) -> None:
    budget = RenderBudget(min_interval=1.0, bucket="b", capacity=1, window=5.0)
    pacer = Pacer(clock)
    pacer.bucket_for(RateLimit("b", 1, 5.0)).charge(clock.now())  # the channel's slot is taken
    surface = RecordingSurface(clock, budget)
    renderer = pacer.renderer(surface)
    renderer.update("a")
    await clock.advance(1.0)
    renderer.update("a whole")
    finishing = asyncio.create_task(renderer.finish("a whole reply"))
    await clock.advance(5.0)
    await finishing
    assert [(text, final) for _, text, final in surface.renders] == [("a whole reply", True)]


async def test_final_without_any_update_renders_once(clock: FakeClock) -> None:
    surface = RecordingSurface(clock, RenderBudget(min_interval=1.0))
    await Pacer(clock).renderer(surface).finish("only text")
    assert surface.renders == [(1000.0, "only text", True)]


async def test_concurrent_replies_share_one_bucket_without_exceeding_it(clock: FakeClock) -> None:
    budget = RenderBudget(min_interval=1.0, bucket="discord:1", capacity=5, window=5.0)
    pacer = Pacer(clock)
    surfaces = [RecordingSurface(clock, budget) for _ in range(6)]
    renderers = [pacer.renderer(surface) for surface in surfaces]
    for step in range(60):  # 6 replies, a token each per 0.25 s, for 15 s
        for index, renderer in enumerate(renderers):
            renderer.update(f"reply {index} token {step}")
        await clock.advance(0.25)
    finals = [asyncio.create_task(r.finish(f"reply {i} done")) for i, r in enumerate(renderers)]
    for _ in range(40):
        await clock.advance(1.0)
    await asyncio.gather(*finals)
    times = sorted(t for surface in surfaces for t, _, _ in surface.renders)
    window = 5.0 + LATENCY_MARGIN
    assert all(sum(1 for u in times if t <= u < t + window) <= 5 for t in times)
    for index, surface in enumerate(surfaces):
        assert surface.renders[-1][1:] == (f"reply {index} done", True)
        gaps = [b[0] - a[0] for a, b in zip(surface.renders, surface.renders[1:], strict=False)]
        assert all(gap >= 1.0 - 1e-9 for gap in gaps)


async def test_extra_requests_a_render_spent_are_charged(clock: FakeClock) -> None:
    budget = RenderBudget(bucket="b", capacity=6, window=10.0)
    surface = RecordingSurface(clock, budget, spend=3)  # e.g. an edit plus two follow-up messages
    renderer = Pacer(clock).renderer(surface)
    renderer.update("long")
    await settle()
    renderer.update("longer")
    await clock.advance(1.0)
    assert len(surface.renders) == 2  # 3 + 3 requests: the bucket of 6 is full
    renderer.update("longest")
    await clock.advance(5.0)
    assert len(surface.renders) == 2
    await clock.advance(5.0 + LATENCY_MARGIN)
    assert len(surface.renders) == 3


async def test_a_reply_that_changes_path_is_paced_by_the_new_budget(clock: FakeClock) -> None:
    stream = RenderBudget(min_interval=1.0, bucket="stream", capacity=90, window=60.0)
    updates = RenderBudget(min_interval=1.0, bucket="updates", capacity=2, window=60.0)
    pacer = Pacer(clock)
    surface = RecordingSurface(clock, stream)
    renderer = pacer.renderer(surface)
    renderer.update("a")
    await settle()
    surface.budget = updates  # the stream expired: from now on every render is a chat.update
    for text in ("ab", "abc", "abcd"):
        renderer.update(text)
        await clock.advance(1.0)
    assert [text for _, text, _ in surface.renders] == ["a", "ab"]  # the other slot is kept for the final
    await clock.advance(60.0)
    assert [text for _, text, _ in surface.renders][-1] == "abcd"


async def test_edits_leave_a_slot_for_each_final_and_one_for_a_new_reply(clock: FakeClock) -> None:
    budget = RenderBudget(bucket="b", capacity=8, window=10.0)
    pacer = Pacer(clock)
    surfaces = [RecordingSurface(clock, budget) for _ in range(3)]
    renderers = [pacer.renderer(surface) for surface in surfaces]
    for step in range(5):
        for renderer in renderers:
            renderer.update(f"text {step}")
        await clock.advance(1.0)
    # 3 first texts at once, then edits until 3 slots for the finals and 1 for a new reply are left.
    assert [len(surface.renders) for surface in surfaces] == [2, 1, 1]
    finishing = [asyncio.create_task(r.finish("done")) for r in renderers]
    await settle()
    assert all(task.done() for task in finishing)  # every final went at once
    assert [surface.renders[-1][1:] for surface in surfaces] == [("done", True)] * 3
    assert pacer.bucket_for(budget.cost(final=True)[0]).replies == 0


async def test_a_final_does_not_wait_out_the_pause_of_an_intermediate(clock: FakeClock) -> None:
    budget = RenderBudget(bucket="b", capacity=6, window=10.0)
    pacer = Pacer(clock)
    other = pacer.renderer(RecordingSurface(clock, budget))
    for text in ("a", "ab", "abc", "abcd"):
        other.update(text)
        await clock.advance(0.1)
    surface = RecordingSurface(clock, budget)
    renderer = pacer.renderer(surface)
    renderer.update("first")  # a first text may use the whole bucket: 4 of 6 slots used
    await settle()
    renderer.update("first, then more")
    await clock.advance(1.0)
    assert [text for _, text, _ in surface.renders] == ["first"]  # an edit leaves 2 for finals, 1 for a first
    finishing = asyncio.create_task(renderer.finish("first, then more, done"))
    await settle()
    assert surface.renders[-1] == (clock.now(), "first, then more, done", True) and finishing.done()


async def pausing_after_a_first_render(clock: FakeClock) -> tuple[RecordingSurface, PacedRenderer]:
    """A reply that showed "a" and has "ab" to show: its render task sleeps out the interval."""
    surface = RecordingSurface(clock, RenderBudget(min_interval=1.0))
    renderer = Pacer(clock).renderer(surface)
    renderer.update("a")
    await settle()
    renderer.update("ab")
    await settle()
    return surface, renderer


async def test_a_final_wakes_a_render_pausing_for_the_interval_in_one_pass_of_the_loop(
    clock: FakeClock,
) -> None:
    """With a thousand replies streaming, one pass of the event loop takes a few hundred milliseconds: the
    final text waits for no more passes than it must (finish's own, then the render's)."""
    surface, renderer = await pausing_after_a_first_render(clock)
    assert clock.sleepers == 1  # the render sleeps out the interval after "a"
    finishing = asyncio.ensure_future(renderer.finish("ab, done"))
    await asyncio.sleep(0)  # finish runs
    await asyncio.sleep(0)  # and the render it woke
    assert surface.renders[-1] == (clock.now(), "ab, done", True)
    await finishing
    assert clock.sleepers == 0 and [text for _, text, _ in surface.renders] == ["a", "ab, done"]


async def test_a_render_pausing_for_the_interval_still_ends_when_cancelled_from_outside(
    clock: FakeClock,
) -> None:
    """The pause tells the final's wake-up from any other cancellation, which it lets through."""
    surface, renderer = await pausing_after_a_first_render(clock)
    task = renderer._task
    assert task is not None and clock.sleepers == 1
    finishing = asyncio.ensure_future(renderer.finish("ab, done"))
    task.cancel()  # in the same pass as the final's wake-up
    with pytest.raises(asyncio.CancelledError):
        await finishing
    assert task.cancelled() and [text for _, text, _ in surface.renders] == ["a"]


async def test_a_render_that_spent_nothing_gives_its_slot_back(clock: FakeClock) -> None:
    budget = RenderBudget(bucket="b", capacity=2, window=10.0)
    pacer = Pacer(clock)
    free = RecordingSurface(clock, budget, spend=0)  # e.g. a chat.postMessage, outside chat.update's budget
    await pacer.renderer(free).finish("posted")
    assert pacer.bucket_for(budget.cost(final=True)[0]).wait_time(clock.now()) == 0
    paid = RecordingSurface(clock, budget)
    finishing = [asyncio.create_task(pacer.renderer(paid).finish(text)) for text in ("one", "two")]
    await settle()
    assert all(task.done() for task in finishing)  # both slots were still there: no waiting
    assert sorted(t for _, t, _ in paid.renders) == ["one", "two"]


async def test_a_failing_render_is_logged_and_the_reply_still_finishes(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    surface = RecordingSurface(clock, RenderBudget(), fail_first=1)
    renderer = Pacer(clock).renderer(surface)
    renderer.update("lost")
    await settle()
    with caplog.at_level(logging.ERROR):
        await renderer.finish("lost and found")
    assert surface.renders == [(1000.0, "lost and found", True)]
    assert "rendering a reply failed" in caplog.text


def test_bucket_wait_time_counts_the_oldest_request_in_the_window() -> None:
    bucket = RequestBucket(capacity=2, window=10.0)
    bucket.charge(0.0)
    bucket.charge(3.0)
    assert bucket.wait_time(4.0) == pytest.approx(6.0 + LATENCY_MARGIN)
    assert bucket.wait_time(10.0 + LATENCY_MARGIN) == 0.0


# Renders that draw on different buckets (Slack limits every method on its own).
APPEND = RateLimit("append", 3, 10.0)
STOP = RateLimit("stop", 2, 10.0)


async def test_edits_and_finals_draw_on_the_buckets_their_costs_name(clock: FakeClock) -> None:
    budget = RenderBudget(min_interval=1.0, edit=(APPEND,), final=(STOP,))
    surface = RecordingSurface(clock, budget)
    renderer = Pacer(clock).renderer(surface)
    for step in range(6):
        renderer.update(f"text {step}")
        await clock.advance(1.0)
    # The first text may use all of `append`; the edits then keep one slot for a reply yet to come.
    assert [text for _, text, _ in surface.renders] == ["text 0", "text 1"]
    finishing = asyncio.create_task(renderer.finish("done"))
    await clock.advance(1.0)
    assert finishing.done()  # `stop` had room, however full `append` was
    assert surface.renders[-1][1:] == ("done", True)


async def test_a_final_drawing_on_two_buckets_waits_for_the_fuller_one(clock: FakeClock) -> None:
    pacer = Pacer(clock)
    stop = pacer.bucket_for(STOP)
    stop.charge(clock.now(), 2)  # both `stop` slots taken by other replies
    surface = RecordingSurface(clock, RenderBudget(final=(APPEND, STOP)), spend=2)
    finishing = asyncio.create_task(pacer.renderer(surface).finish("start and stop at once"))
    await clock.advance(9.0)
    assert not finishing.done()
    await clock.advance(1.0 + LATENCY_MARGIN)
    await finishing
    assert surface.renders == [(clock.now(), "start and stop at once", True)]
    assert pacer.bucket_for(APPEND).wait_time(clock.now(), count=3) > 0  # one `append` slot charged


async def test_one_bucket_named_twice_needs_two_slots(clock: FakeClock) -> None:
    pacer = Pacer(clock)
    pacer.bucket_for(STOP).charge(clock.now())
    surface = RecordingSurface(clock, RenderBudget(final=(STOP, STOP)), spend=2)
    finishing = asyncio.create_task(pacer.renderer(surface).finish("two requests"))
    await clock.advance(5.0)
    assert not finishing.done()
    await clock.advance(5.0 + LATENCY_MARGIN)
    await finishing


async def test_slots_a_render_did_not_use_are_given_back(clock: FakeClock) -> None:
    pacer = Pacer(clock)
    surface = RecordingSurface(clock, RenderBudget(final=(APPEND, STOP)), spend=1)
    await pacer.renderer(surface).finish("only the first request went out")
    assert pacer.bucket_for(APPEND).wait_time(clock.now(), count=3) > 0
    assert pacer.bucket_for(STOP).wait_time(clock.now(), count=2) == 0  # the second slot came back


async def test_has_room_keeps_a_slot_for_the_final_of_every_reply_drawing_on_a_bucket(
    clock: FakeClock,
) -> None:
    start = RateLimit("start", 5, 60.0)
    stop = RateLimit("stop", 3, 60.0)
    streaming = RenderBudget(min_interval=1.0, edit=(APPEND,), final=(stop,))
    pacer = Pacer(clock)
    assert pacer.has_room((start, stop))
    renderers = [pacer.renderer(RecordingSurface(clock, streaming)) for _ in range(2)]
    for renderer in renderers:
        renderer.update("streaming")
    await settle()
    # Two streams are owed a stop each: a third still fits beside them, a fourth would not.
    assert pacer.has_room((start, stop))
    third = pacer.renderer(RecordingSurface(clock, streaming))
    third.update("streaming too")
    await settle()
    assert not pacer.has_room((start, stop))
    assert pacer.has_room((start,))  # `start` itself has room: only `stop` is spent
    finishing = asyncio.create_task(third.finish("done"))
    await clock.advance(1.0)
    await finishing
    assert pacer.bucket_for(stop).replies == 2  # the third is owed nothing more
    assert not pacer.has_room((start, stop))  # but its stop is in the window for a minute
    await clock.advance(60.0 + LATENCY_MARGIN)
    assert pacer.has_room((start, stop))


async def test_a_render_that_names_its_requests_is_charged_exactly_those(clock: FakeClock) -> None:
    post = RateLimit("post", 1, 1.0)
    pacer = Pacer(clock)
    # The budget said a stream start and stop; the start was refused and the text was posted instead.
    surface = RecordingSurface(clock, RenderBudget(final=(APPEND, STOP)), spend=[APPEND, post])
    await pacer.renderer(surface).finish("posted")
    assert pacer.bucket_for(STOP).wait_time(clock.now(), count=2) == 0  # its reserved slot came back
    assert pacer.bucket_for(APPEND).wait_time(clock.now(), count=3) > 0
    assert pacer.bucket_for(post).wait_time(clock.now()) > 0  # the post was charged where it went


async def test_a_reply_is_owed_a_final_slot_where_its_final_will_draw(clock: FakeClock) -> None:
    post, update = RateLimit("post", 5, 10.0), RateLimit("update", 3, 10.0)
    pacer = Pacer(clock)
    # Not posted yet: a final now would be a post, but once posted it will be an update.
    surface = RecordingSurface(clock, RenderBudget(edit=(post,), final=(post,), owed=(update,)))
    renderer = pacer.renderer(surface)
    renderer.update("first")
    await settle()
    assert (pacer.bucket_for(update).replies, pacer.bucket_for(post).replies) == (1, 0)
    other = pacer.renderer(RecordingSurface(clock, RenderBudget(edit=(update,), final=(update,))))
    for text in ("a", "ab", "abc"):
        other.update(text)
        await clock.advance(1.0)
    # The other reply's edits keep a slot for this reply's final and one for a reply yet to come.
    assert pacer.bucket_for(update).wait_time(clock.now(), rank=EDIT) > 0
    assert pacer.bucket_for(update).wait_time(clock.now()) == 0
    surface.budget = RenderBudget(edit=(update,), final=(update,))
    await renderer.finish("done")
    assert pacer.bucket_for(update).replies == 1  # only the other reply is owed anything now


async def test_a_slot_given_back_after_its_window_passed_is_simply_gone(clock: FakeClock) -> None:
    post = RateLimit("post", 1, 1.0)
    pacer = Pacer(clock)

    class SlowSurface(RecordingSurface):
        async def render(self, text: str, *, final: bool) -> int | list[RateLimit]:
            await clock.sleep(5.0)  # a 429 retried after Retry-After, say: longer than the window
            self.renders.append((clock.now(), text, final))
            return []  # and in the end nothing was sent

    surface = SlowSurface(clock, RenderBudget(final=(post,)))
    finishing = asyncio.create_task(pacer.renderer(surface).finish("slow"))
    await clock.advance(1.0 + LATENCY_MARGIN)
    assert pacer.bucket_for(post).wait_time(clock.now()) == 0  # the reservation left the window
    await clock.advance(5.0)
    await finishing  # giving back a slot no longer in the window is not an error
    assert surface.renders == [(1005.0, "slow", True)]


async def test_replies_that_show_nothing_go_first_then_finals_then_edits(clock: FakeClock) -> None:
    """Ten replies in a channel that takes five requests per five seconds, all wanting to show at once and
    all finished three seconds in: the five that showed nothing yet go as soon as slots free, before the
    finals of the five that did, and nobody's intermediate edits take a slot meanwhile."""
    budget = RenderBudget(min_interval=1.0, bucket="channel", capacity=5, window=5.0)
    pacer = Pacer(clock)
    surfaces = [RecordingSurface(clock, budget) for _ in range(10)]
    renderers = [pacer.renderer(surface) for surface in surfaces]
    finishing = []
    for step in range(15):  # tokens every 0.2 s, then the end
        for renderer in renderers:
            renderer.update("x" * (step + 1))
        await clock.advance(0.2)
    finishing = [asyncio.create_task(renderer.finish("done")) for renderer in renderers]
    await clock.advance(15.0)
    assert all(task.done() for task in finishing)
    window = 5.0 + LATENCY_MARGIN
    started, waited = surfaces[:5], surfaces[5:]
    assert all(s.renders[0][0] == 1000.0 for s in started)
    # Those that showed nothing had finished meanwhile: their first render is their final.
    assert [s.renders for s in waited] == [[(pytest.approx(1000.0 + window), "done", True)]] * 5
    assert [s.renders[1:] for s in started] == [[(pytest.approx(1000.0 + 2 * window), "done", True)]] * 5
    times = sorted(t for s in surfaces for t, _, _ in s.renders)
    assert all(later - earlier >= window - 1e-9 for earlier, later in zip(times, times[5:], strict=False))


class HeldSurface(RecordingSurface):
    """Its final render waits until released, as a platform call in flight does."""

    def __init__(self, clock: FakeClock, budget: RenderBudget) -> None:
        super().__init__(clock, budget)
        self.final_started = asyncio.Event()
        self.release = asyncio.Event()

    async def render(self, text: str, *, final: bool) -> int | list[RateLimit]:
        if final:
            self.final_started.set()
            await self.release.wait()
        return await super().render(text, final=final)


async def test_a_final_render_in_flight_counts_once_against_the_slot_kept_for_it(clock: FakeClock) -> None:
    stop = RateLimit("stop", 2, 60.0)
    streaming = RenderBudget(min_interval=1.0, edit=(APPEND,), final=(stop,))
    pacer = Pacer(clock)
    surface = HeldSurface(clock, streaming)
    renderer = pacer.renderer(surface)
    renderer.update("streaming")
    await settle()
    assert pacer.has_room((stop,))  # one stop owed to this reply, one free
    finishing = asyncio.create_task(renderer.finish("done"))
    await clock.advance(1.0)
    await surface.final_started.wait()
    # The stop being sent is the one kept for this reply: the other slot is still free.
    assert pacer.has_room((stop,))
    surface.release.set()
    await finishing
    assert pacer.has_room((stop,)) and not pacer.has_room((stop, stop))


class PagedSurface(RecordingSurface):
    """A surface of pages of 10 characters: a final whose text runs past the first page posts another."""

    def __init__(self, clock: FakeClock, update: RateLimit, post: RateLimit) -> None:
        super().__init__(clock, RenderBudget(min_interval=1.0, edit=(update,), final=(update, post)))
        self.update, self.post = update, post

    def final_cost(self, text: str) -> list[RateLimit]:
        return [self.update] if len(text) <= 10 else [self.update, self.post]

    async def render(self, text: str, *, final: bool) -> int | list[RateLimit]:
        await super().render(text, final=final)
        return self.final_cost(text) if final else [self.update]


async def test_a_final_reserves_only_what_its_text_will_call(clock: FakeClock) -> None:
    """The channel's post slot is held (the reply's own first post took it): a final that fits its page
    goes at once, one that opens a new page waits for the slot."""
    update, post = RateLimit("update", 45, 60.0), RateLimit("post", 1, 1.0)
    pacer = Pacer(clock)
    fits, runs_over = PagedSurface(clock, update, post), PagedSurface(clock, update, post)
    pacer.bucket_for(post).charge(clock.now())
    fitting = asyncio.create_task(pacer.renderer(fits).finish("fits"))
    await settle()
    assert fits.renders == [(1000.0, "fits", True)] and fitting.done()
    finishing = asyncio.create_task(pacer.renderer(runs_over).finish("runs onto a second page"))
    await clock.advance(1.0)
    assert runs_over.renders == []
    await clock.advance(LATENCY_MARGIN)
    await finishing
    assert runs_over.renders == [(1000.0 + 1.0 + LATENCY_MARGIN, "runs onto a second page", True)]
    assert pacer.bucket_for(update).wait_time(clock.now(), count=43) == 0  # an update each, no more
    assert pacer.bucket_for(update).wait_time(clock.now(), count=44) > 0


def test_a_compared_answer_is_costed_with_its_label(clock: FakeClock) -> None:
    update, post = RateLimit("update", 45, 60.0), RateLimit("post", 1, 1.0)
    assert Labelled(PagedSurface(clock, update, post), "A").final_cost("short") == [update, post]
    assert Labelled(RecordingSurface(clock, RenderBudget(final=(post,))), "A").final_cost("x") == (post,)


async def test_a_slot_taken_midway_is_counted_once_when_the_render_reports_it(clock: FakeClock) -> None:
    """A render reserved a stream start, was refused and posts instead: it takes the post's slot before
    posting (so that another render cannot take it meanwhile), then reports the post; the pacer counts
    it once, from when it was taken."""
    start, post = RateLimit("start", 18, 60.0), RateLimit("post", 2, 1.0)
    pacer = Pacer(clock)

    class RefusedSurface(RecordingSurface):
        async def render(self, text: str, *, final: bool) -> int | list[RateLimit]:
            assert await pacer.take([post]) and not await pacer.take([post, post])
            await clock.sleep(0.5)  # the post in flight
            await super().render(text, final=final)
            return [start, post]

    surface = RefusedSurface(clock, RenderBudget(final=(start,)))
    await asyncio.gather(pacer.renderer(surface).finish("posted"), clock.advance(0.5))
    assert pacer.has_room([post]) and not pacer.has_room([post, post])  # one slot used, not two
    await clock.advance(1.0 + LATENCY_MARGIN - 0.5)  # a window from the take
    assert pacer.has_room([post, post])
    assert pacer.bucket_for(start).wait_time(clock.now(), count=17) == 0
    assert pacer.bucket_for(start).wait_time(clock.now(), count=18) > 0


async def test_a_finished_reply_is_freed_without_the_garbage_collector(clock: FakeClock) -> None:
    """A reply holds its renderer and the renderer its `on_render`, most often the reply's own method;
    once the final text is shown the renderer lets go, so the reply goes as soon as nothing uses it."""
    import gc
    import weakref

    class Reply:
        def __init__(self, surface: RecordingSurface) -> None:
            self.shown = 0
            self.renderer = Pacer(clock).renderer(surface, on_render=self.recorded)

        async def recorded(self) -> None:
            self.shown += 1

    reply = Reply(RecordingSurface(clock, RenderBudget(min_interval=1.0)))
    reply.renderer.update("a")
    await settle()
    await reply.renderer.finish("a b")
    assert reply.shown == 2
    gone = weakref.ref(reply)
    gc.disable()
    try:
        del reply
        assert gone() is None
    finally:
        gc.enable()
