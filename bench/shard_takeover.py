"""Discord shards over two instances: how long after `kill -9` of one the other runs its shard again.

Two `parley run` processes with DISCORD_SHARD_COUNT=2 on a throwaway PostgreSQL cluster of this
machine's binaries, against the loopback Discord (max_concurrency 1: both shards in one IDENTIFY
bucket, as for most bots) and the loopback provider, in this process. Once each instance holds a
shard, the holder of shard 0 is killed; the figures are from the kill to the survivor's IDENTIFY of
shard 0 accepted, and to its answer of a mention sent the moment that session is up.

    PYTHONPATH=. python bench/shard_takeover.py               # 3 runs, INSTANCE_HEARTBEAT_SECONDS=2
    PYTHONPATH=. python bench/shard_takeover.py --runs 5 --heartbeat 0.5
    PYTHONPATH=. python bench/shard_takeover.py --settle 0   # killed right after the shards spread
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import parley_run

from tests.support import postgres
from tests.support.discord_emulator import BOT_ID, GENERAL, DiscordEmulator
from tests.support.llm_server import LLMServer

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}


def holding(log: Path) -> set[int]:
    held: set[int] = set()
    for taken, given in re.findall(r"shard (\d) of 2 connected|giving shard (\d) up", log.read_text()):
        if taken:
            held.add(int(taken))
        else:
            held.discard(int(given))
    return held


async def wait_for(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the instances did not get there in time")
        await asyncio.sleep(0.01)


async def run_once(server: str, run: int, heartbeat: float, settle: float) -> tuple[float, float]:
    database = await postgres.create_database(server, f"bench_shards_{run}_{os.getpid()}")
    home = Path(tempfile.mkdtemp(prefix="parley-bench-shards-"))
    async with DiscordEmulator(shards=2, max_concurrency=1) as discord_api, LLMServer() as llm:
        env = parley_run.environment(
            home,
            llm,
            database,
            DISCORD_TOKEN="bench-token",
            DISCORD_API_BASE=discord_api.api_base,
            DISCORD_GATEWAY_URL=discord_api.gateway_url,
            DISCORD_SHARD_COUNT="2",
            INSTANCE_HEARTBEAT_SECONDS=str(heartbeat),
        )
        logs = [home / f"{name}.log" for name in "ab"]
        processes = []
        for log in logs:
            with log.open("wb") as written:
                processes.append(await parley_run.start(home, env, stderr=written))
        try:
            await wait_for(lambda: [len(holding(log)) for log in logs] == [1, 1])
            await wait_for(lambda: discord_api.sessions_on(0) == discord_api.sessions_on(1) == 1)
            await asyncio.sleep(settle)  # past the last IDENTIFY's slot: a deployment that has run a while
            victim = 0 if 0 in holding(logs[0]) else 1
            identified = len(discord_api.identifies)
            killed = time.monotonic()
            processes[victim].send_signal(signal.SIGKILL)
            await processes[victim].wait()
            await wait_for(
                lambda: len(discord_api.identifies) > identified and discord_api.sessions_on(0) == 1
            )
            taken = discord_api.identifies[-1][1] - killed
            await discord_api.send_message(GENERAL, f"<@{BOT_ID}> there?", mentions=[MENTION])
            await wait_for(lambda: bool(discord_api.messages_in(GENERAL)))
            answered = time.monotonic() - killed
        finally:
            for process in processes:
                await parley_run.stop(process)
    return taken, answered


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--heartbeat", type=float, default=2.0, help="INSTANCE_HEARTBEAT_SECONDS")
    parser.add_argument(
        "--settle", type=float, default=7.0, help="seconds between both instances running and the kill"
    )
    args = parser.parse_args()
    with parley_run.postgres_server() as server:
        print(
            f"INSTANCE_HEARTBEAT_SECONDS={args.heartbeat:g}, kill {args.settle:g} s after both run; "
            "target: within seconds (no number set)"
        )
        print("| run | kill → shard 0 identified again | kill → answered on shard 0 |")
        print("|---|---|---|")
        for run in range(args.runs):
            taken, answered = await run_once(server, run, args.heartbeat, args.settle)
            print(f"| {run + 1} | {taken:.2f} s | {answered:.2f} s |")


if __name__ == "__main__":
    asyncio.run(main())
