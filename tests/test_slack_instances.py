"""Slack with several instances on one PostgreSQL: the workspace's rate budgets shared between them, and
Socket Mode with a connection per instance. Real `parley run` processes, the real Bolt app, the loopback
Slack and LLM."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from sqlalchemy import Connection, text

from bot.store import Store
from tests.support.balancer import Balancer
from tests.support.llm_server import LLMServer
from tests.support.slack_api import BOT_USER, TEAM, SlackAPI, SlackUser
from tests.test_several_instances import (
    ALICE,
    WORKERS,
    Deliveries,
    free_ports,
    on_postgres,
    until,
    workers,
)

MENTIONS = 36  # twice what one minute of chat.startStream allows a workspace


def answered_count(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM inbox WHERE state = 'done'")).scalar_one())


def mention_in(slack: SlackAPI, user: SlackUser, channel: str, n: int) -> dict[str, object]:
    said = slack.say(user.id, channel, f"<@{BOT_USER}> question {n}")
    event = {"type": "app_mention", "user": user.id, "text": said.text, "ts": said.ts, "channel": channel}
    return {
        "type": "event_callback",
        "team_id": TEAM,
        "api_app_id": "A1",
        "event_id": f"Ev{n}",
        "event_time": int(time.time()),
        "event": {**event, "team": TEAM},
    }


@on_postgres
async def test_three_instances_share_the_workspaces_budgets_and_draw_no_429(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> None:
    """36 mentions at once in 36 channels, spread over three instances: each instance alone would start
    up to 18 streams a minute, together past Slack's 20. Shared, the streams stop at the budget and the
    other replies are posted as messages, and Slack refuses nothing."""
    base = free_ports(WORKERS)
    async with (
        SlackAPI(users={ALICE.id: ALICE}) as slack,
        workers(llm, tmp_path, slack, database_url, base),
        Balancer([base + k for k in range(WORKERS)]) as balancer,
        aiohttp.ClientSession() as http,
    ):
        deliveries = Deliveries(http, balancer.url)
        payloads = [mention_in(slack, ALICE, f"C{n}", n) for n in range(MENTIONS)]
        statuses = await asyncio.gather(*(deliveries.post(payload) for payload in payloads))
        assert statuses == [200] * MENTIONS
        assert len(set(balancer.served)) == WORKERS
        store = await Store.open(database_url)
        try:

            async def all_answered() -> bool:
                return await store.read(answered_count) == MENTIONS

            await until(all_answered, "every mention answered")
        finally:
            await store.close()
        assert slack.throttled == {}
        streams = len(slack.calls_to("chat.startStream"))
        assert streams <= 18  # Parley's share of the tier, for the three instances together
        assert len(slack.calls_to("chat.postMessage")) == MENTIONS - streams
        for n in range(MENTIONS):
            (reply,) = slack.replies(f"C{n}")
            assert reply.text == f"echo: Alice: question {n}" and not reply.streaming
