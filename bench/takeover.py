"""Leader takeover: how long a per-second schedule goes without a run when its leader is killed.

`parley run --workers 3` on a throwaway PostgreSQL cluster of this machine's binaries, a schedule that
fires every second posting in the loopback Slack; the leader (whoever ran the newest run) is killed with
SIGKILL, several times in a row, each time once all three workers run (the one killed before started
again). For each kill: the time until a run starts on another instance, and
the longest gap between two runs' fire times around it (1 s when no fire time was lost).

    PYTHONPATH=. python bench/takeover.py                        # 5 kills, INSTANCE_HEARTBEAT_SECONDS=2
    PYTHONPATH=. python bench/takeover.py --kills 10 --heartbeat 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import tempfile
import time
from pathlib import Path

import parley_run
from figures import percentile
from sqlalchemy import text

from bot.schema import schedule_runs
from bot.store import Store
from tests.support import postgres
from tests.support.llm_server import LLMServer
from tests.support.schedules import every_second
from tests.support.slack_api import SlackAPI

WORKERS = 3


async def runs(store: Store) -> list[tuple[float, float, str]]:
    """(fire time, start, instance) of every run, by fire time."""
    query = schedule_runs.select().order_by(schedule_runs.c.fire_at)
    rows = await store.read(lambda conn: list(conn.execute(query)))
    return [(row.fire_at, row.started_at, row.instance) for row in rows]


async def beating(store: Store, heartbeat: float) -> int:
    """Instances whose heartbeat loop runs (a beat since they started), by the database's clock."""
    query = text(
        "SELECT count(*) FROM instances WHERE heartbeat_at > started_at + :half "
        "AND heartbeat_at > extract(epoch FROM clock_timestamp()) - :window"
    )
    values = {"half": heartbeat / 2, "window": 2 * heartbeat}
    return await store.read(lambda conn: int(conn.execute(query, values).scalar_one()))


async def measure(server: str, kills: int, heartbeat: float) -> tuple[list[float], list[float], list[float]]:
    database = await postgres.create_database(server, f"bench_takeover_{os.getpid()}")
    store = await Store.open(database)
    home = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    await every_second(store, "slack:C1", "tick", "UB", "Bench")
    takeovers: list[float] = []
    gaps: list[float] = []
    lateness: list[float] = []
    async with SlackAPI() as slack, LLMServer() as llm:
        base = parley_run.free_base(WORKERS)
        env = parley_run.environment(
            home,
            llm,
            database,
            **parley_run.slack_app(slack, base),
            SCHEDULE_MIN_INTERVAL="1",
            INSTANCE_HEARTBEAT_SECONDS=str(heartbeat),
            LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        )
        process = await parley_run.start(home, env, "--workers", str(WORKERS))
        try:
            await parley_run.until_serving(base, WORKERS)
            for _ in range(kills):
                # The leader has run a few, and every worker (the one killed last, started again) beats.
                while len(done := await runs(store)) < 3 or await beating(store, heartbeat) < WORKERS:
                    if process.returncode is not None:
                        raise SystemExit(f"parley run stopped (exit {process.returncode}); see its log above")
                    await asyncio.sleep(0.05)
                done = await runs(store)
                leader = done[-1][2]
                os.kill(int(leader.rsplit("-", 2)[1]), signal.SIGKILL)
                killed = time.time()
                while not (after := [r for r in await runs(store) if r[2] != leader and r[1] > killed]):
                    await asyncio.sleep(0.02)
                takeovers.append(after[0][1] - killed)
                await asyncio.sleep(3)  # a few more runs, and the supervisor starts the killed worker again
                done = await runs(store)
                until = killed + takeovers[-1] + 2  # the runs around the kill
                fires = [r[0] for r in done]
                gaps.append(max(b - a for a, b in itertools.pairwise(fires) if killed - 2 < b < until))
                lateness.append(max(start - fire for fire, start, _ in done if killed - 2 < fire < until))
        finally:
            await parley_run.stop(process)
            await store.close()
    return takeovers, gaps, lateness


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--heartbeat", type=float, default=2.0, help="INSTANCE_HEARTBEAT_SECONDS")
    args = parser.parse_args()
    with parley_run.postgres_server() as server:
        takeovers, gaps, lateness = await measure(server, args.kills, args.heartbeat)
    print(f"{args.kills} kills of the leader, INSTANCE_HEARTBEAT_SECONDS={args.heartbeat:g}")
    print("target: another instance takes over within seconds (it checks for the lead every heartbeat)")
    for name, values in (
        ("kill → next run on another instance", takeovers),
        ("runs' start after their fire time", lateness),
        ("longest gap between fire times (1 s: none lost)", gaps),
    ):
        print(f"{name}: p50 {percentile(values, 0.5):.2f} s, max {max(values):.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
