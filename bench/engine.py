"""Engine overhead under load: many concurrent conversations against a loopback provider.

The provider runs in its own process and writes its send time into every token, so the engine's own
overhead can be read off at the surface: message in → provider request out, and provider token out →
surface render. Both clocks are CLOCK_MONOTONIC, shared by processes on one Linux machine.

    python bench/engine.py                      # defaults: 500 conversations, 40 tokens at 50 tokens/s
    python bench/engine.py --conversations 1000 --tokens 40 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
import time

from loopback_provider import engine_settings, start
from sqlalchemy import insert

from bot.engine import Engine
from bot.models import Author, ConversationKey, Message, RenderBudget
from bot.store import turns
from bot.tokens import estimate_tokens

# The engine side


class TimingSurface:
    """A null surface that reads the provider's timestamps out of the text it is asked to show."""

    budget = RenderBudget()

    def __init__(self, sent_at: float, request_out: list[float], token_to_render: list[float]) -> None:
        self._sent_at = sent_at
        self._request_out = request_out
        self._token_to_render = token_to_render
        self.final_text = ""
        self._seen_first = False

    async def start(self) -> None:
        return None

    async def render(self, text: str, *, final: bool) -> int:
        now = time.monotonic()
        if final:
            self.final_text = text
            return 0
        if not self._seen_first:  # the first token carries the request's arrival time too
            self._seen_first = True
            arrived = text[1:].split("/", 1)[0]
            self._request_out.append(float(arrived) - self._sent_at)
        newest = text.rsplit("[", 1)[-1].rstrip("]").split("/")[-1]
        self._token_to_render.append(now - float(newest))
        return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def load_run(
    engine: Engine, conversations: int, rounds: int = 1, ramp: float = 0.0, think: float = 0.0
) -> dict[str, float]:
    """`conversations` open at once; each sends `rounds` messages, waiting `think` seconds after each reply.

    Conversations start spread evenly over `ramp` seconds (0: all in the same instant, a burst).
    """
    request_out: list[float] = []
    token_to_render: list[float] = []
    surfaces: list[TimingSurface] = []
    author = Author("bench", "Bench")

    async def conversation(index: int) -> None:
        await asyncio.sleep(ramp * index / conversations)
        for turn in range(rounds):
            surface = TimingSurface(time.monotonic(), request_out, token_to_render)
            surfaces.append(surface)
            message = Message(ConversationKey("bench", f"c{index}"), author, f"question {turn}")
            await engine.handle(message, surface)
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
    replies = len(surfaces)
    return {
        "replies": replies,
        "failed": sum(1 for s in surfaces if not s.final_text.endswith("]")),
        "elapsed_s": elapsed,
        "replies_per_s": replies / elapsed,
        "cpu_s_per_reply": cpu / replies,
        "cpu_busy_fraction": cpu / elapsed,
        "request_out_p50_ms": percentile(request_out, 0.5) * 1000,
        "request_out_p99_ms": percentile(request_out, 0.99) * 1000,
        "token_render_p50_ms": percentile(token_to_render, 0.5) * 1000,
        "token_render_p99_ms": percentile(token_to_render, 0.99) * 1000,
        "rss_growth_mb": peak - rss_before,
        "rss_per_conversation_kb": (peak - rss_before) * 1024 / conversations,
    }


async def context_assembly(engine: Engine, stored: int, budget: int, repeats: int = 50) -> float:
    """Median time to pick the turns that fit `budget` tokens, with `stored` turns on record."""
    conversation = f"bench:history{stored}"
    if not await engine.store.count_turns(conversation):
        rows = [
            {
                "conversation": conversation,
                "role": "user" if i % 2 == 0 else "assistant",
                "author_id": "b",
                "author_name": "Bench",
                "content": f"message number {i} " * 8,
                "tokens": estimate_tokens(f"message number {i} " * 8),
                "created_at": 0.0,
            }
            for i in range(stored)
        ]
        async with engine.store._db.begin() as conn:  # bulk load; the public API adds one turn at a time
            for start in range(0, len(rows), 5000):
                await conn.execute(insert(turns), rows[start : start + 5000])
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        await engine.store.recent_turns(conversation, budget)
        timings.append(time.perf_counter() - began)
    return statistics.median(timings)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per reply")
    parser.add_argument(
        "--rounds", type=int, default=3, help="messages per conversation in the sustained run"
    )
    parser.add_argument(
        "--think", type=float, default=10.0, help="seconds between a reply and the next message"
    )
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which conversations start")
    parser.add_argument("--memory-conversations", type=int, default=1000)
    args = parser.parse_args()

    provider, port = start(args.tokens, args.rate)
    with tempfile.TemporaryDirectory() as tmp:
        settings = engine_settings(port, tmp)
        engine = await Engine.create(settings)
        await engine.catalog.all_names()  # warm the model list, as a running bot would have
        await load_run(engine, 20)  # warm connections and code paths
        shape = f"{args.tokens} tokens at {args.rate:g}/s"
        sustained = (
            f"sustained: {args.conversations} conversations open, {args.rounds} messages each, "
            f"{args.think:g} s think time, {shape}"
        )
        runs = {
            f"uncontended: 1 conversation, 30 messages one after another, {shape}": (1, 30, 0, 0),
            sustained: (args.conversations, args.rounds, args.ramp, args.think),
            f"burst: {args.conversations} messages in the same instant, {shape}": (
                args.conversations,
                1,
                0,
                0,
            ),
            f"memory: {args.memory_conversations} replies streaming at once, {shape}": (
                args.memory_conversations,
                1,
                0,
                0,
            ),
        }
        for title, (conversations, rounds, ramp, think) in runs.items():
            print(title)
            for name, value in (await load_run(engine, conversations, rounds, ramp, think)).items():
                print(f"  {name:26} {value:10.3f}")
        turn_tokens = estimate_tokens("message number 5000 " * 8)
        print("context assembly, median of 50 (time follows the turns that fit, not the turns stored)")
        for budget, label in ((10 * turn_tokens, "budget fits 10 turns"), (32_000, "32k-token budget")):
            small = await context_assembly(engine, 10, budget)
            large = await context_assembly(engine, 100_000, budget)
            print(
                f"  {label}: 10 stored {small * 1000:.3f} ms, 100,000 stored {large * 1000:.3f} ms, "
                f"ratio {large / small:.2f}"
            )
        mid = await context_assembly(engine, 1_000, 32_000)
        print(f"  32k-token budget, 1,000 stored (as many fit as at 100,000): {mid * 1000:.3f} ms")
        await engine.aclose()
    provider.terminate()


if __name__ == "__main__":
    asyncio.run(main())
