"""Three `parley run` workers on one PostgreSQL serving Slack's HTTP events behind a round-robin loopback
balancer: `parley run --workers 3`, real processes, the real Bolt app, the loopback Slack and LLM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from bot.engine import RESTARTED_NOTE
from bot.store import Store
from tests.support.cli import CHECKOUT, environment
from tests.support.instances import (
    ALICE,
    SECRET,
    WORKERS,
    Deliveries,
    behind_a_balancer,
    free_ports,
    mention,
    on_postgres,
    until,
    workers,
)
from tests.support.llm_server import LLMServer, Script
from tests.support.slack_api import BOT_USER, SlackAPI


def asked(llm: LLMServer) -> list[str]:
    return [r.json["messages"][-1]["content"] for r in llm.chat_requests()]


@on_postgres
async def test_a_delivery_and_its_retries_on_three_instances_get_one_reply(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> None:
    async with behind_a_balancer(llm, tmp_path, database_url) as (slack, balancer, deliveries):
        payload = mention(slack, "C1", "hello", "EvHello")
        statuses = [await deliveries.post(payload, retry=attempt) for attempt in range(WORKERS)]
        assert statuses == [200] * WORKERS
        assert sorted(balancer.served) == balancer.ports  # each to another instance

        async def answered() -> bool:
            return len(slack.calls_to("chat.stopStream")) == 1

        await until(answered, "the reply finished")
        for attempt in range(WORKERS, 2 * WORKERS):  # later retries change nothing
            assert await deliveries.post(payload, retry=attempt) == 200
        later = mention(slack, "C1", "and you?", "EvLater")  # and the instances still answer new messages
        assert await deliveries.post(later) == 200

        async def both() -> bool:
            return len(slack.calls_to("chat.stopStream")) == 2

        await until(both, "the second reply finished")
    assert asked(llm) == ["Alice: hello", "Alice: and you?"]
    assert len(slack.calls_to("chat.startStream")) == 2


@on_postgres
async def test_one_threads_messages_spread_over_instances_are_answered_in_order(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> None:
    llm.enqueue(*(Script(tokens=[f"answer{n} ", "more"], delay=0.05) for n in range(5)))
    async with behind_a_balancer(llm, tmp_path, database_url) as (slack, balancer, deliveries):
        parent = mention(slack, "C1", "question 0", "Ev0")
        thread = parent["event"]["ts"]
        assert await deliveries.post(parent) == 200
        for n in range(1, 5):
            assert (
                await deliveries.post(mention(slack, "C1", f"question {n}", f"Ev{n}", thread_ts=thread))
                == 200
            )
        assert len(set(balancer.served)) == WORKERS

        async def answered() -> bool:
            return len(slack.calls_to("chat.stopStream")) == 5

        await until(answered, "five replies finished")
        calls = [c.method for c in slack.calls if c.method in ("chat.startStream", "chat.stopStream")]
    assert asked(llm) == [f"Alice: question {n}" for n in range(5)]
    # Each reply started after the one before it had finished: renders never overlapped.
    assert calls == ["chat.startStream", "chat.stopStream"] * 5
    for n, request in enumerate(llm.chat_requests()):
        context = [m["content"] for m in request.json["messages"]]
        assert [c for c in context if c.startswith("answer")] == [f"answer{k} more" for k in range(n)]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@on_postgres
async def test_an_instance_killed_mid_reply_is_taken_over_by_the_others(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> None:
    """Its half-finished reply is edited to say it was cut off (not posted again), and the message it
    had accepted and not answered yet is answered by another instance."""
    base = free_ports(WORKERS)
    gate = asyncio.Semaphore(0)
    llm.enqueue(Script(tokens=[f"word{i} " for i in range(40)], gate=gate, stall_after=10))
    async with (
        SlackAPI(users={ALICE.id: ALICE}) as slack,
        workers(llm, tmp_path, slack, database_url, base),
        aiohttp.ClientSession() as http,
    ):
        store = await Store.open(database_url)
        try:
            deliveries = Deliveries(http, "")
            first = mention(slack, "C1", "tell me a story", "EvStory")
            thread = first["event"]["ts"]
            assert await deliveries.post(first, url=f"http://127.0.0.1:{base}/slack/events") == 200
            for _ in range(10):
                gate.release()

            async def shown() -> bool:
                return any(r.refs is not None for r in await store.streaming("slack"))

            await until(shown, "the reply's first text stored with where it shows")
            (reply,) = await store.streaming("slack")
            # Alice goes on in the thread, at the same instance; that message waits for her reply.
            followup = mention(slack, "C1", "and then?", "EvThen", thread_ts=thread)
            assert await deliveries.post(followup, url=f"http://127.0.0.1:{base}/slack/events") == 200

            async def accepted() -> bool:
                return len(await store.pending("slack")) == 2

            await until(accepted, "both messages stored")
            owner_of = f"SELECT instance FROM turns WHERE id = {reply.turn_id}"
            owner = await store.read(lambda conn: conn.exec_driver_sql(owner_of).scalar_one())
            pid = int(owner.rsplit("-", 2)[1])
            os.kill(pid, signal.SIGKILL)
            cut = slack.replies("C1")[0]

            async def taken_over() -> bool:
                answers = [m for m in slack.thread("C1", thread) if m.text == "echo: Alice: and then?"]
                done = RESTARTED_NOTE in cut.text and not cut.streaming
                finished = len(answers) == 1 and not answers[0].streaming
                # The answer's message is closed in the inbox just after its final text shows.
                return done and finished and await store.pending("slack") == []

            await until(taken_over, "the cut reply repaired and the waiting message answered")
            bot_messages = [m for m in slack.thread("C1", thread) if m.user == BOT_USER]
            assert len(bot_messages) == 2  # the repaired reply and the answer: nothing posted twice
        finally:
            await store.close()
    assert sorted(asked(llm)) == ["Alice: and then?", "Alice: tell me a story"]


async def test_workers_on_sqlite_are_refused_in_one_sentence(llm: LLMServer, tmp_path: Path) -> None:
    env = environment(
        llm, tmp_path, SLACK_BOT_TOKEN="xoxb-1", SLACK_SIGNING_SECRET=SECRET, PYTHONPATH=CHECKOUT
    )
    for count, reason in (
        ("2", "--workers 2 needs PostgreSQL: with SQLite one process serves everything"),
        ("0", "--workers 0 cannot work: give a number of processes, 1 or more"),
    ):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            "--workers",
            count,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        (line,) = [line for line in err.decode().splitlines() if "error" in line.lower()]
        assert (process.returncode, out) == (2, b"")
        assert line.startswith(f"error: {reason}")
    assert not (tmp_path / "data").exists()  # nothing was started
