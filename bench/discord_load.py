"""Discord end to end: concurrent mentions through the real discord.py client and a loopback Discord.

The loopback Discord enforces 5 message writes per 5 s per channel (answering 429 beyond it) and runs in
this process; the provider runs in its own and stamps its send time into every token.

    python bench/discord_load.py                    # 20 replies in one channel, then 20 across two
    python bench/discord_load.py --replies 40 --tokens 60 --rate 30
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from typing import Any

from loopback_provider import engine_settings, start, token_times

from adapters.discord import serve
from bot.engine import Engine
from tests.support.discord_emulator import BOT_ID, GENERAL, RANDOM, DiscordEmulator

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(port: int, channels: list[int], replies: int, tokens: int) -> dict[str, float]:
    async with DiscordEmulator() as discord_api, _engine(port, discord_api) as engine:
        task = asyncio.create_task(serve(engine, engine.settings))
        await asyncio.wait_for(discord_api.ready.wait(), 30)
        await asyncio.sleep(0.5)
        cpu_before = _cpu()
        sent_at: dict[str, float] = {}
        for index in range(replies):
            author = {
                "id": str(100_000_000_000_003_000 + index),
                "username": f"u{index}",
                "global_name": f"U{index}",
            }
            channel = channels[index % len(channels)]
            sent_at[
                await discord_api.send_message(
                    channel, f"<@{BOT_ID}> q{index}", mentions=[MENTION], author=author
                )
            ] = time.monotonic()
        async with asyncio.timeout(600):
            while not all(_finished(discord_api, incoming, tokens) for incoming in sent_at):
                await asyncio.sleep(0.05)
        cpu = _cpu() - cpu_before
        first_visible, first_after_token, final, edits = [], [], [], []
        for incoming, started in sent_at.items():
            reply = _reply(discord_api, incoming)
            post = next(
                c
                for c in discord_api.calls
                if c.method == "POST"
                and str((c.json or {}).get("message_reference", {}).get("message_id")) == incoming
            )
            patches = [
                c
                for c in discord_api.calls
                if c.method == "PATCH" and c.path.endswith(f"/messages/{reply['id']}")
            ]
            first_visible.append(post.at - started)
            first_after_token.append(post.at - token_times(post.json["content"])[0])
            final.append((patches[-1].at if patches else post.at) - started)
            edits.append(len(patches))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {
        "replies": replies,
        "first_visible_p50_ms": percentile(first_visible, 0.5) * 1000,
        "first_visible_p99_ms": percentile(first_visible, 0.99) * 1000,
        "first_text_after_token_p50_ms": percentile(first_after_token, 0.5) * 1000,
        "first_text_after_token_p99_ms": percentile(first_after_token, 0.99) * 1000,
        "final_edit_p50_ms": percentile(final, 0.5) * 1000,
        "final_edit_p99_ms": percentile(final, 0.99) * 1000,
        "edits_per_reply": sum(edits) / replies,
        "http_429s": discord_api.rate_limited,
        "cpu_s_per_reply": cpu / replies,
    }


def _reply(discord_api: DiscordEmulator, incoming: str) -> dict[str, Any]:
    return next(
        m
        for m in discord_api.state.messages.values()
        if str((m.get("message_reference") or {}).get("message_id")) == incoming
    )


def _finished(discord_api: DiscordEmulator, incoming: str, tokens: int) -> bool:
    try:
        return len(token_times(_reply(discord_api, incoming)["content"])) == tokens
    except StopIteration:
        return False


class _engine:
    """An engine on a temporary database, pointed at the loopback provider and Discord."""

    def __init__(self, port: int, discord_api: DiscordEmulator) -> None:
        self._port = port
        self._discord = discord_api
        self._tmp = tempfile.TemporaryDirectory()

    async def __aenter__(self) -> Engine:
        settings = engine_settings(
            self._port,
            self._tmp.name,
            discord_token="bench-token",
            discord_api_base=self._discord.api_base,
            discord_gateway_url=self._discord.gateway_url,
        )
        self.engine = await Engine.create(settings)
        return self.engine

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.aclose()
        self._tmp.cleanup()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--rate", type=float, default=20.0, help="provider tokens per second per reply")
    args = parser.parse_args()
    provider, port = start(args.tokens, args.rate)
    shape = f"{args.tokens} tokens at {args.rate:g}/s"
    for title, channels in (("one channel", [GENERAL]), ("two channels", [GENERAL, RANDOM])):
        print(f"{args.replies} concurrent mentions, {title}, {shape}")
        for name, value in (await run(port, channels, args.replies, args.tokens)).items():
            print(f"  {name:32} {value:10.3f}")
    provider.terminate()


if __name__ == "__main__":
    asyncio.run(main())
