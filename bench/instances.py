"""Several instances on one PostgreSQL: replies per second and first-text p50 with 1 and with 3 instances.

`parley run` (or `parley run --workers 3`) serves Slack's HTTP events behind a round-robin loopback
balancer, on a throwaway PostgreSQL cluster of this machine's binaries; the loopback Slack (with Slack's
rate tiers, counting the 429s it answers) and the loopback provider run in this process. A burst of
mentions in many channels arrives at once.

    PYTHONPATH=. python bench/instances.py                  # 60 mentions in 20 channels
    PYTHONPATH=. python bench/instances.py --mentions 150
    PYTHONPATH=. python bench/instances.py --no-tiers       # the loopback Slack refuses nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import parley_run
from figures import percentile
from sqlalchemy.engine import make_url

from tests.support import postgres
from tests.support.balancer import Balancer
from tests.support.llm_server import LLMServer, Script
from tests.support.slack_api import BOT_USER, TEAM, SlackAPI, SlackUser, signed_headers

USER = SlackUser("UB", "Bench")
SHOWING = ("chat.startStream", "chat.appendStream", "chat.postMessage")  # the calls that show a text


async def measure(
    server: str, instances: int, mentions: int, channels: int, tokens: int, tiers: bool
) -> dict[str, float]:
    database = await postgres.create_database(server, f"bench_{instances}_{os.getpid()}")
    home = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    async with SlackAPI(users={USER.id: USER}) as slack, LLMServer() as llm:
        if not tiers:
            slack.limits.clear()
        llm.enqueue(*(Script(tokens=[f"w{i} " for i in range(tokens)], delay=0.02) for _ in range(mentions)))
        base = parley_run.free_base(instances)
        env = parley_run.environment(
            home,
            llm,
            database,
            **parley_run.slack_app(slack, base),
            LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        )
        workers = ["--workers", str(instances)] if instances > 1 else []
        process = await parley_run.start(home, env, *workers)
        try:
            await parley_run.until_serving(base, instances)
            async with (
                Balancer([base + k for k in range(instances)]) as balancer,
                aiohttp.ClientSession() as http,
            ):
                sent: dict[str, float] = {}

                async def post(index: int) -> None:
                    channel = f"C{index % channels}"
                    said = slack.say(USER.id, channel, f"<@{BOT_USER}> question {index}")
                    event = {"type": "app_mention", "user": USER.id, "text": said.text, "ts": said.ts}
                    payload = {
                        "type": "event_callback",
                        "team_id": TEAM,
                        "api_app_id": "A1",
                        "event_id": f"Ev{index}",
                        "event_time": int(time.time()),
                        "event": {**event, "channel": channel, "team": TEAM},
                    }
                    body = json.dumps(payload)
                    headers = {"Content-Type": "application/json", **signed_headers(body, parley_run.SECRET)}
                    sent[said.ts] = time.monotonic()
                    async with http.post(
                        f"{balancer.url}/slack/events", data=body, headers=headers
                    ) as answer:
                        assert answer.status == 200

                start = time.monotonic()
                await asyncio.gather(*(post(index) for index in range(mentions)))
                dsn = make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
                counter = await asyncpg.connect(dsn)
                try:  # answered: its message closed in the inbox, after its final text
                    query = "SELECT count(*) FROM inbox WHERE state = 'done'"
                    while await counter.fetchval(query) < mentions:
                        await asyncio.sleep(0.02)
                finally:
                    await counter.close()
                end = time.monotonic()
                first: dict[str, float] = {}
                for call in slack.calls:
                    if call.method in SHOWING and _text(call.args):
                        first.setdefault(str(call.args.get("thread_ts")), call.at)
                waits = [first[ts] - sent[ts] for ts in sent if ts in first]
        finally:
            await parley_run.stop(process)
    return {
        "replies/s": mentions / (end - start),
        "first text p50 ms": 1000 * percentile(waits, 0.5),
        "first text p99 ms": 1000 * percentile(waits, 0.99),
        "429s": sum(slack.throttled.values()),
    }


def _text(args: dict[str, Any]) -> str:
    text = args.get("markdown_text") or args.get("text") or ""
    return text + "".join(chunk.get("text", "") for chunk in args.get("chunks") or [])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mentions", type=int, default=60)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply, at 50 tokens/s")
    parser.add_argument("--no-tiers", action="store_true", help="the loopback Slack without rate tiers")
    args = parser.parse_args()
    with parley_run.postgres_server() as server:
        print(f"{args.mentions} mentions at once in {args.channels} channels, {args.tokens} tokens each")
        print("| instances | replies/s | first text p50 | first text p99 | 429s |")
        print("|---|---|---|---|---|")
        for instances in [int(n) for n in os.environ.get("BENCH_INSTANCES", "1,3").split(",")]:
            figures = await measure(
                server, instances, args.mentions, args.channels, args.tokens, not args.no_tiers
            )
            print(
                f"| {instances} | {figures['replies/s']:.1f} | {figures['first text p50 ms']:,.0f} ms "
                f"| {figures['first text p99 ms']:,.0f} ms | {figures['429s']:.0f} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
