"""The engine under load: many concurrent replies against a loopback provider, through the inbox.

The provider runs in its own process and writes its send time into every token, so the engine's own
overhead can be read off at the surface: message in → provider request out, and provider token out →
surface render. Both clocks are CLOCK_MONOTONIC, shared by processes on one Linux machine. Each run has
its own provider and engine (a fresh SQLite file); messages go in through `Engine.accept`, as an
adapter's do, and replies render on a null surface paced like a real one (one render a second).

    python bench/engine.py                     # every run, ~4 minutes
    python bench/engine.py --only streams      # 1,000 replies streaming at once
    python bench/engine.py --only overhead     # 500 conversations, sustained
    python bench/engine.py --only context      # 128k context, 100,000 stored turns: read, then held
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import multiprocessing
import os
import resource
import tempfile
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from figures import percentile
from loopback_provider import MODEL_ID, engine_settings, last_token_time, start, token_times
from sqlalchemy import insert

from bot import runtime
from bot.config import DATABASE_POOL_SIZE, ProviderSettings
from bot.engine import Engine
from bot.models import Author, ConversationKey, Message, RenderBudget
from bot.providers.base import ChatMessage, ChatRequest, ProviderError, TextDelta, Timeouts
from bot.providers.openai_compat import OpenAICompatibleProvider
from bot.store import turns
from bot.tokens import estimate_tokens

RENDER_INTERVAL = 1.0
AUTHOR = Author("bench", "Bench")
MESSAGE_IDS = itertools.count()


class TimingSurface:
    """A null surface that reads the provider's timestamps out of the text it is asked to show.

    Its reply's figures count from when the message was handed to `Engine.accept` (`message_in`), so
    that storing the message, and any wait for the store in a burst, is part of them."""

    budget = RenderBudget(min_interval=RENDER_INTERVAL)

    def __init__(self, run: Run, message_in: float) -> None:
        self._run = run
        self.message_in = message_in
        self.renders: list[float] = []
        self.final_text = ""
        self.finished_at = 0.0

    @property
    def refs(self) -> dict[str, Any] | None:
        return {"bench": True} if self.renders else None

    async def start(self) -> None:
        return None

    async def render(self, text: str, *, final: bool) -> int:
        now = time.monotonic()
        if not self.renders and text.startswith("["):  # the first token carries the request's arrival too
            arrived = text[1:].split("/", 1)[0]
            self._run.request_out.append(float(arrived) - self.message_in)
        self.renders.append(now)
        if (sent := last_token_time(text)) is not None:
            self._run.token_to_render.append(now - sent)
        if final:
            self.final_text = text
            self.finished_at = now
        return 1


class Run:
    """What one run measured, and the platform port its replies render through."""

    name = "bench"

    def __init__(self) -> None:
        self.request_out: list[float] = []
        self.token_to_render: list[float] = []
        self.surfaces: list[TimingSurface] = []
        self.message_in: dict[ConversationKey, float] = {}  # when each conversation's latest message went in

    async def surface_for(
        self, conversation: ConversationKey, reply_to: Mapping[str, Any] | None = None
    ) -> Any:
        surface = TimingSurface(self, self.message_in[conversation])
        self.surfaces.append(surface)
        return surface

    async def reopen(self, conversation: ConversationKey, refs: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def load(
    engine: Engine, conversations: int, tokens: int, rounds: int = 1, ramp: float = 0.0, think: float = 0.0
) -> dict[str, float]:
    """`conversations` open at once; each sends `rounds` messages, waiting `think` seconds after each reply.

    Conversations start spread evenly over `ramp` seconds (0: all in the same instant)."""
    return summary([await measure(engine, conversations, tokens, rounds, ramp, think)])


async def measure(
    engine: Engine,
    conversations: int,
    tokens: int,
    rounds: int = 1,
    ramp: float = 0.0,
    think: float = 0.0,
    prefix: str = "",
) -> dict[str, Any]:
    """What `load` measures, unsummed, so that the figures of several processes can be put together."""
    run = Run()
    engine.platforms["bench"] = run  # type: ignore[assignment]
    outcomes: list[str] = []

    async def conversation(index: int) -> None:
        await asyncio.sleep(ramp * index / conversations)
        for turn in range(rounds):
            key = ConversationKey("bench", f"{prefix}c{index}")
            message = Message(key, AUTHOR, f"question {turn}", id=f"{prefix}m{next(MESSAGE_IDS)}")
            run.message_in[key] = time.monotonic()
            try:
                task = await engine.accept(message, {})
                assert task is not None
                outcomes.append(await task)
            except Exception as error:  # counted as failed, rather than ending the whole run
                outcomes.append(f"error: {type(error).__name__}")
            await asyncio.sleep(think)

    rss_before = rss_mb()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    peak = rss_before
    tasks = [asyncio.create_task(conversation(i)) for i in range(conversations)]
    while not all(task.done() for task in tasks):
        peak = max(peak, rss_mb())
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    surfaces = run.surfaces
    complete = sum(1 for s in surfaces if len(token_times(s.final_text)) == tokens)
    return {
        "replies": len(surfaces),
        "failed": len(surfaces) - complete + sum(1 for outcome in outcomes if outcome != "ok"),
        "elapsed": elapsed,
        "cpu": cpu,
        "request_out": run.request_out,
        "token_to_render": run.token_to_render,
        "durations": [s.finished_at - s.message_in for s in surfaces],
        "provider_times": [  # a reply that failed shows a sentence instead, without timestamps
            stamps[-1] - stamps[0] for s in surfaces if len(stamps := token_times(s.final_text)) > 1
        ],
        "gaps": [b - a for s in surfaces for a, b in zip(s.renders, s.renders[1:], strict=False)],
        "peak_rss_mb": peak,
        "rss_before_mb": rss_before,
    }


def summary(measured: list[dict[str, Any]]) -> dict[str, float]:
    """The figures of one or more processes' runs, measured at the same time: their sum, or their worst."""

    def joined(name: str) -> list[float]:
        return [value for part in measured for value in part[name]]

    replies = sum(part["replies"] for part in measured)
    request_out, token_to_render = joined("request_out"), joined("token_to_render")
    durations, provider_times = joined("durations"), joined("provider_times")
    return {
        "replies": replies,
        "failed": sum(part["failed"] for part in measured),
        "replies_per_s": replies / max(part["elapsed"] for part in measured),
        "cpu_s_per_reply": sum(part["cpu"] for part in measured) / replies,
        "request_out_p50_ms": percentile(request_out, 0.5) * 1000,
        "request_out_p99_ms": percentile(request_out, 0.99) * 1000,
        "token_render_p50_ms": percentile(token_to_render, 0.5) * 1000,
        "token_render_p99_ms": percentile(token_to_render, 0.99) * 1000,
        "duration_p50_s": percentile(durations, 0.5),
        "provider_time_p50_s": percentile(provider_times, 0.5),
        "duration_over_provider_p50": percentile(durations, 0.5) / percentile(provider_times, 0.5),
        "render_gap_max_s": max(joined("gaps"), default=0.0),
        "peak_rss_mb": sum(part["peak_rss_mb"] for part in measured),  # every process's, added up
        "rss_growth_mb": sum(part["peak_rss_mb"] - part["rss_before_mb"] for part in measured),
    }


async def engine_for(port: int, directory: str, database: str | None = None, **more: object) -> Engine:
    settings = engine_settings(port, directory, **more)
    if database is not None:
        settings = settings.model_copy(update={"database_url": database})
    engine = await Engine.create(settings)
    await engine.catalog.all_names()  # warm the model list, as a running bot would have
    return engine


async def store_history(engine: Engine, conversation: str, stored: int) -> None:
    """Bulk-load `stored` turns of about 50 tokens each into one conversation."""
    rows = [
        {
            "conversation": conversation,
            "role": "user" if i % 2 == 0 else "assistant",
            "author_id": "b",
            "author_name": "Bench",
            "content": f"message number {i} " * 12,
            "tokens": estimate_tokens(f"message number {i} " * 12),
            "created_at": 0.0,
        }
        for i in range(stored)
    ]

    def bulk(conn: Any) -> None:
        for begin in range(0, len(rows), 5000):
            conn.execute(insert(turns), rows[begin : begin + 5000])

    await engine.store.write(bulk)


def show(title: str, figures: dict[str, float], targets: dict[str, str]) -> None:
    print(title)
    for name, value in figures.items():
        target = f"   target {targets[name]}" if name in targets else ""
        print(f"  {name:28} {value:10.3f}{target}")


def thread_cpu() -> tuple[float, float]:
    """CPU seconds so far of this process's main thread (the event loop) and of all its other threads
    (the store's), from /proc (Linux)."""
    loop = others = 0.0
    for thread in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{thread}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if int(thread) == os.getpid():
            loop += seconds
        else:
            others += seconds
    return loop, others


async def streams(args: argparse.Namespace, tmp: str) -> None:
    provider, port = start(args.tokens, args.rate)
    where = "SQLite"
    cluster = None
    try:
        database = None
        if args.postgres or args.workers > 1:
            from tests.support import postgres  # asyncpg and the cluster, only here

            server = os.environ.get("PARLEY_TEST_POSTGRES_URL")
            if server is None:
                cluster = Path(tempfile.mkdtemp(prefix="parley-bench-pg-"))
                server = postgres.start(cluster)
            database = await postgres.create_database(server, f"bench_streams_{os.getpid()}")
            pool = os.environ.get("DATABASE_POOL_SIZE", DATABASE_POOL_SIZE)
            where = f"PostgreSQL, a pool of {pool} connections per process"
        if args.workers > 1:
            figures = await asyncio.to_thread(spread, args, port, tmp, database)
            where += f", {args.workers} engine processes"
        else:
            engine = await engine_for(port, tmp, database)
            await load(engine, 20, args.tokens)  # warm connections and code paths
            runtime.settle()  # as `parley run` does once started
            before, provider_before = thread_cpu(), process_cpu(provider.pid)
            with Collections() as collections:
                figures = await load(engine, args.streams, args.tokens)
            after, provider_after = thread_cpu(), process_cpu(provider.pid)
            figures["cpu_ms_per_reply_loop"] = (after[0] - before[0]) / args.streams * 1000
            figures["cpu_ms_per_reply_threads"] = (after[1] - before[1]) / args.streams * 1000
            figures["cpu_ms_per_reply_provider"] = (provider_after - provider_before) / args.streams * 1000
            figures |= collections.figures()
            await engine.aclose()
    finally:
        provider.terminate()
        if cluster is not None:
            from tests.support import postgres

            postgres.stop(cluster)
    targets = {
        "duration_over_provider_p50": "<= 1.3",
        "render_gap_max_s": f"<= {2 * RENDER_INTERVAL:g} (twice the render interval)",
        "failed": "0",
        "peak_rss_mb": "< 300",
    }
    title = f"streams: {args.streams} replies at once, {args.tokens} tokens at {args.rate:g}/s"
    show(f"{title} ({where}, {args.loop})", figures, targets)


async def reads(args: argparse.Namespace, tmp: str) -> None:
    """The streams run's read path alone: the provider code reading `args.streams` replies at once, with no
    engine, store or surface behind it: what one loop can read, and how late each token is read."""
    provider_process, port = start(args.tokens, args.rate)
    provider = OpenAICompatibleProvider(
        "bench", ProviderSettings(base_url=f"http://127.0.0.1:{port}/v1"), Timeouts()
    )
    request = ChatRequest(MODEL_ID, (ChatMessage("user", "question"),))
    late: list[float] = []
    failed = 0

    async def reply(measured: bool) -> None:
        nonlocal failed
        received = 0
        try:
            async for event in provider.stream(request):
                if isinstance(event, TextDelta):  # the tokens of one read come as one delta
                    sent = token_times(event.text)
                    received += len(sent)
                    if measured:
                        now = time.monotonic()
                        late.extend(now - at for at in sent)
        except ProviderError:
            pass
        failed += measured and received != args.tokens

    try:
        await asyncio.gather(*(reply(False) for _ in range(20)))  # warm connections and code paths
        cpu_before, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        provider_before = process_cpu(provider_process.pid)
        await asyncio.gather(*(reply(True) for _ in range(args.streams)))
        elapsed, cpu_after = time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF)
        provider_cpu = process_cpu(provider_process.pid) - provider_before
    finally:
        await provider.aclose()
        provider_process.terminate()
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    provider_time = (args.tokens - 1) / args.rate
    figures = {
        "replies": args.streams,
        "failed": failed,
        "cpu_us_per_token": cpu / max(len(late), 1) * 1e6,
        "cpu_share_of_one_core": cpu / elapsed,
        "provider_cpu_us_per_token": provider_cpu / max(len(late), 1) * 1e6,
        "provider_cpu_share_of_one_core": provider_cpu / elapsed,
        "token_late_p50_ms": percentile(late, 0.5) * 1000,
        "token_late_p99_ms": percentile(late, 0.99) * 1000,
        "token_late_max_ms": max(late, default=float("nan")) * 1000,
        "all_replies_over_provider": elapsed / provider_time,
    }
    title = f"reads: {args.streams} replies read at once, {args.tokens} tokens at {args.rate:g}/s, no engine"
    show(f"{title} ({args.loop})", figures, {"failed": "0"})


def spread(args: argparse.Namespace, port: int, tmp: str, database: str | None) -> dict[str, float]:
    """The streams run over `args.workers` processes on one database, each with its share of the streams,
    all starting in the same instant once every one has warmed up."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    go = context.Event()
    shares = [args.streams // args.workers + (k < args.streams % args.workers) for k in range(args.workers)]
    processes = [
        context.Process(
            target=worker,
            args=(k, shares[k], args.tokens, args.loop, port, tmp, database, ready, go, results),
        )
        for k in range(args.workers)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=120)
    go.set()
    measured = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    figures = summary(measured)
    for name in ("loop", "threads"):  # as the one-process run prints them, every process's added up
        figures[f"cpu_ms_per_reply_{name}"] = (
            sum(part[f"cpu_{name}"] for part in measured) / args.streams * 1000
        )
    return figures


def worker(
    index: int,
    count: int,
    tokens: int,
    loop: str,
    port: int,
    tmp: str,
    database: str | None,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    async def run() -> None:
        engine = await engine_for(port, tmp, database)
        await measure(engine, 20, tokens, prefix=f"warm{index}-")
        ready.put(index)
        await asyncio.to_thread(go.wait)
        before = thread_cpu()
        measured = await measure(engine, count, tokens, prefix=f"w{index}-")
        after = thread_cpu()
        measured["cpu_loop"], measured["cpu_threads"] = after[0] - before[0], after[1] - before[1]
        results.put(measured)
        await engine.aclose()

    running(run(), loop)


def running(main: Coroutine[Any, Any, None], loop: str) -> None:
    """Run `main` on asyncio's own loop or on uvloop's."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:
        asyncio.run(main)


async def overhead(args: argparse.Namespace, tmp: str) -> None:
    provider, port = start(40, 50.0)
    engine = await engine_for(port, tmp)
    await load(engine, 20, 40)
    runtime.settle()  # as `parley run` does once started
    single = await load(engine, 1, 40, rounds=20)
    show("uncontended: 1 conversation, 20 messages one after another, 40 tokens at 50/s", single, {})
    with Collections() as collections:
        figures = await load(engine, args.conversations, 40, rounds=3, ramp=10.0, think=10.0)
    figures |= collections.figures()
    await engine.aclose()
    provider.terminate()
    targets = {"request_out_p99_ms": "< 10", "token_render_p99_ms": "< 10"}
    title = (
        f"overhead: {args.conversations} conversations open, 3 messages each, 10 s think, 40 tokens at 50/s"
    )
    show(title, figures, targets)


async def context(args: argparse.Namespace, tmp: str) -> None:
    """A message in a conversation of 100,000 stored turns, with a 128k-token window to fill: each turn
    read from the store for every reply, then from the in-memory window, in one run.

    Every reply at a full window starts a running-summary update (a model call of its own); the replies
    here go ahead without waiting for it, so the figure is the context's, not the summary model's."""
    provider, port = start(5, 50.0)
    for label, memory_mb in (("read from the store", 0.0), ("in-memory window", 64.0)):
        directory = tempfile.mkdtemp(dir=tmp)
        engine = await engine_for(port, directory, context_memory_mb=memory_mb, summary_wait_seconds=0)
        await store_history(engine, "bench:c0", 100_000)
        figures = await load(engine, 1, 5, rounds=args.context_rounds)
        reads = dict(engine.windows.reads)
        await engine.aclose()
        show(
            f"context, {label}: 1 conversation of 100,000 stored turns, 128k-token window, "
            f"{args.context_rounds} messages one after another (window reads: {reads})",
            {
                k: figures[k]
                for k in ("replies", "failed", "request_out_p50_ms", "request_out_p99_ms", "cpu_s_per_reply")
            },
            {"request_out_p50_ms": "<= 5"},
        )
    provider.terminate()


def process_cpu(pid: int | None) -> float:
    """CPU seconds so far of another process of this machine (the loopback provider), from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Collections:
    """The garbage collector's stops while in the block, per generation: each stops the event loop."""

    def __init__(self) -> None:
        self.stops: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._began = 0.0

    def __enter__(self) -> Collections:
        gc.callbacks.append(self._timed)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._timed)

    def _timed(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.stops[info["generation"]].append(time.perf_counter() - self._began)

    def figures(self) -> dict[str, float]:
        """How many full collections, how long the loop stood still for them and for the young ones, and
        the longest stop of each."""
        full, young = self.stops[2], self.stops[0] + self.stops[1]
        return {
            "full_collections": float(len(full)),
            "full_collection_ms": sum(full) * 1000,
            "full_collection_max_ms": max(full, default=0.0) * 1000,
            "young_collection_ms": sum(young) * 1000,
            "young_collection_max_ms": max(young, default=0.0) * 1000,
        }


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("streams", "overhead", "context", "reads"))
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply in the streams run")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per reply")
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--context-rounds", type=int, default=30)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the engine's loop")
    parser.add_argument("--postgres", action="store_true", help="streams: on a throwaway PostgreSQL")
    parser.add_argument(
        "--workers", type=int, default=1, help="streams: spread over N engine processes on one PostgreSQL"
    )
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    runs = {"streams": streams, "overhead": overhead, "context": context, "reads": reads}
    for name, run in runs.items():
        if args.only in (None, name):
            with tempfile.TemporaryDirectory() as tmp:
                await run(args, tmp)


if __name__ == "__main__":
    ARGS = arguments()
    running(main(ARGS), ARGS.loop)
