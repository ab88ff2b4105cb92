"""The store's write path on its own: the transactions replies make, many replies at once, on SQLite.

Each reply makes the writes the engine makes for it: the message accepted (inbox row and user turn),
the assistant row at its first render, a checkpoint of its text, and its final record with the inbox
closed and its usage row. Every write is one transaction, timed from the call to its return. Then a
reply's look-up (bot/lookups.py), its CPU per call on a connection and through the store's reader.

    PYTHONPATH=. python bench/store.py               # 100 concurrent for 10 s, then 1,000 replies at once
    PYTHONPATH=. python bench/store.py --concurrent 100 --seconds 10 --burst 1000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from figures import percentile

from bot.accounting import Ledger
from bot.lookups import look_up
from bot.models import Author, ConversationKey, Message
from bot.providers.base import Usage
from bot.store import AssistantRecord, Store

AUTHOR = Author("bench", "Bench")
TEXT = "a reply of about two hundred tokens " * 25
TARGET_RATE, TARGET_P99_MS = 1000, 50.0
WRITES_PER_REPLY = 4


async def one_reply(
    store: Store, index: int, timed: Callable[[Awaitable[Any]], Awaitable[Any]], pause: float = 0.0
) -> None:
    """A reply's writes, `pause` seconds apart (a reply streams between them)."""
    key = ConversationKey("bench", f"c{index % 50}")
    message = Message(key, AUTHOR, f"question {index}", id=f"m{index}-{time.monotonic_ns()}")
    entry = await timed(store.accept(message, None, message.text, 4))
    await asyncio.sleep(pause)
    streaming = AssistantRecord(TEXT[:40], "bench/m", "streaming")
    turn = await timed(store.start_reply(str(key), entry.turn_id, AUTHOR.id, streaming, 10, {"m": index}))
    await asyncio.sleep(pause)
    so_far = AssistantRecord(TEXT[:400], "bench/m", "streaming")
    if hasattr(store, "save_checkpoints"):  # batched: one transaction saves every reply streaming
        from bot.store import Checkpoint

        await timed(store.save_checkpoints([Checkpoint(turn, so_far.content, so_far.model, 100)]))
    else:  # so that the same bench measures the store of a commit before batched checkpoints
        await timed(store.update_reply(turn, so_far, 100))
    await asyncio.sleep(pause)
    final = AssistantRecord(TEXT, "bench/m", "ok", 20, 200, None, 4000)
    # The usage row goes with the final record where the store takes it (a commit before wrote it apart).
    usage = {"usage_rows": usage_rows(message, entry.id)} if takes_usage(store) else {}
    await timed(store.finish_reply(entry.id, str(key), turn, entry.turn_id, AUTHOR.id, final, 200, **usage))


def takes_usage(store: Store) -> bool:
    return "usage_rows" in inspect.signature(store.finish_reply).parameters


def usage_rows(message: Message, inbox_id: int) -> list[dict[str, Any]]:
    """The rows the engine would record for the reply: one model's call, as `Ledger` makes them."""
    ledger = Ledger()
    ledger.add("bench/m", Usage(20, 200))
    return ledger.rows(message, inbox_id, time.time())


class Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.locked = 0
        self.failed = 0

    async def timed(self, call: Awaitable[Any]) -> Any:
        began = time.perf_counter()
        result = await call
        self.latencies.append(time.perf_counter() - began)
        return result

    async def reply(self, store: Store, index: int, pause: float = 0.0) -> None:
        try:
            await one_reply(store, index, self.timed, pause)
        except Exception as error:
            self.failed += 1
            self.locked += "database is locked" in str(error)


async def sustained(
    store: Store, concurrent: int, seconds: float, rate: float | None = None
) -> dict[str, float]:
    """`concurrent` replies under way at all times for `seconds`: as fast as the store takes them, or
    with their writes spaced so that together they offer `rate` transactions a second."""
    recorder = Recorder()
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    # Little: `concurrent` replies of WRITES_PER_REPLY writes offer `rate` a second when spaced so.
    pause = concurrent / rate if rate else 0.0

    async def worker() -> None:
        while time.monotonic() < deadline:
            await recorder.reply(store, next(counter), pause)

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrent)))
    elapsed = time.monotonic() - began
    return {
        "transactions_per_s": len(recorder.latencies) / elapsed,
        "transaction_p50_ms": percentile(recorder.latencies, 0.5) * 1000,
        "transaction_p99_ms": percentile(recorder.latencies, 0.99) * 1000,
        "failed_replies": recorder.failed,
        "database_is_locked": recorder.locked,
    }


async def burst(store: Store, replies: int) -> dict[str, float]:
    """`replies` replies started in the same instant."""
    recorder = Recorder()
    began = time.monotonic()
    await asyncio.gather(*(recorder.reply(store, 10**8 + i) for i in range(replies)))
    return {
        "elapsed_s": time.monotonic() - began,
        "transaction_p99_ms": percentile(recorder.latencies, 0.99) * 1000,
        "failed_replies": recorder.failed,
        "database_is_locked": recorder.locked,
    }


async def lookups(store: Store, calls: int = 2000) -> dict[str, float]:
    """CPU per reply's look-up (a thread's settings, skill modes, /budget's rows and summary: nothing
    stored, as for most messages), run straight on a connection (best of 5 rounds) and through
    `Store.read` (the reader thread and the event loop's hand-off, whole process)."""
    key = ConversationKey("bench", "c1", "t1")
    targets = [("channel", "bench:c1"), ("server", "bench:s1")]
    engine = store._reader._engine  # type: ignore[union-attr]  # a connection of its own, beside the store
    with engine.connect() as conn:
        rounds = []
        for _ in range(6):
            began = time.thread_time()
            for _ in range(calls):
                look_up(conn, key, targets, None)
            rounds.append((time.thread_time() - began) / calls)
    read = partial(look_up, key=key, budget_targets=targets, window=None)
    began = time.process_time()
    for _ in range(calls):
        await store.read(read)
    through = (time.process_time() - began) / calls
    return {"on_a_connection_us": min(rounds[1:]) * 1e6, "through_store_read_us": through * 1e6}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="sustained runs; best and spread are printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await sustained(store, 10, 1.0)  # warm up
        print(f"{args.concurrent} replies under way at once, {args.seconds:g} s a run, {args.runs} runs")
        for label, rate in (("as fast as it goes", None), (f"offered {TARGET_RATE}/s", TARGET_RATE)):
            runs = [await sustained(store, args.concurrent, args.seconds, rate) for _ in range(args.runs)]
            rates = [run["transactions_per_s"] for run in runs]
            p99s = [run["transaction_p99_ms"] for run in runs]
            p50s = [run["transaction_p50_ms"] for run in runs]
            print(f"  {label}:")
            print(f"    transactions/s  best {max(rates):6.0f}, spread {min(rates):.0f}–{max(rates):.0f}")
            print(f"    p50             best {min(p50s):6.1f} ms, spread {min(p50s):.1f}–{max(p50s):.1f} ms")
            print(f"    p99             best {min(p99s):6.1f} ms, spread {min(p99s):.1f}–{max(p99s):.1f} ms")
            print(f"    failed replies  {sum(run['failed_replies'] for run in runs):6d}")
        print(f"  targets: >= {TARGET_RATE} transactions/s, p99 < {TARGET_P99_MS:g} ms")
        result = await burst(store, args.burst)
        print(f"{args.burst} replies started in the same instant")
        elapsed, p99 = result["elapsed_s"], result["transaction_p99_ms"]
        print(f"  all written in   {elapsed:8.2f} s, transaction p99 {p99:.0f} ms")
        print(f"  failed replies   {result['failed_replies']:8d}")
        print(f"  database is locked {result['database_is_locked']:6d}   target 0")
        cpu = await lookups(store)
        print("a reply's look-up (4 reads, nothing stored), CPU per call")
        print(f"  on a connection  {cpu['on_a_connection_us']:8.0f} µs")
        print(f"  through the reader thread {cpu['through_store_read_us']:.0f} µs (whole process)")
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
