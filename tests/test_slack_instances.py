"""Slack with several instances on one PostgreSQL: the workspace's rate budgets shared between them, and
Socket Mode with a connection per instance. Real `parley run` processes, the real Bolt app, the loopback
Slack and LLM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from bot.store import Store
from tests.support.cli import CHECKOUT, environment
from tests.support.instances import (
    ALICE,
    WORKERS,
    behind_a_balancer,
    mention,
    on_postgres,
    until,
)
from tests.support.llm_server import LLMServer, Script
from tests.support.slack_api import BOT_USER, SlackAPI

MENTIONS = 36  # twice what one minute of chat.startStream allows a workspace


def answered_count(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM inbox WHERE state = 'done'")).scalar_one())


def owners(conn: Connection) -> dict[str, int]:
    """Each inbox message's ts, and the process id of the instance that accepted it."""
    rows = conn.execute(text("SELECT message_id, instance FROM inbox")).all()
    return {row.message_id: int(row.instance.rsplit("-", 2)[1]) for row in rows}


async def acked(slack: SlackAPI, envelope_id: str) -> bool:
    return envelope_id in slack.socket_acks


def answers(slack: SlackAPI, channel: str) -> list[str]:
    return [m.text for m in slack.replies(channel) if not m.streaming]


@on_postgres
async def test_three_instances_share_the_workspaces_budgets_and_draw_no_429(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> None:
    """36 mentions at once in 36 channels, spread over three instances: each instance alone would start
    up to 18 streams a minute, together past Slack's 20. Shared, the streams stop at the budget and the
    other replies are posted as messages, and Slack refuses nothing."""
    async with behind_a_balancer(llm, tmp_path, database_url) as (slack, balancer, deliveries):
        payloads = [mention(slack, f"C{n}", f"question {n}", f"EvS{n}") for n in range(MENTIONS)]
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


@asynccontextmanager
async def socket_instances(
    llm: LLMServer, tmp_path: Path, slack: SlackAPI, database_url: str
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Three `parley run` processes in Socket Mode, each with its own connection to Slack."""
    env = environment(
        llm,
        tmp_path,
        SLACK_BOT_TOKEN=slack.bot_token,
        SLACK_APP_TOKEN=slack.app_token,
        SLACK_API_URL=slack.api_url,
        SLACK_RENDER_INTERVAL="0.05",
        DATABASE_URL=database_url,
        INSTANCE_HEARTBEAT_SECONDS="0.3",
        INSTANCE_TIMEOUT_SECONDS="2",
        PYTHONPATH=CHECKOUT,
    )
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(WORKERS)
    ]
    try:

        async def connected() -> bool:
            return slack.socket_connections == WORKERS

        await until(connected, "three Socket Mode connections")
        yield processes
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in processes:
            _out, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode in (0, -signal.SIGKILL), err.decode()[-3000:]


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
@on_postgres
async def test_socket_mode_spreads_events_over_three_instances_each_answered_once_in_order(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> None:
    """Slack hands each envelope to one connection: three mentions reach the three instances; one
    thread's five messages, spread over them, are answered in order; an envelope the paused instance
    could not ack in time goes to another connection, and is answered once when the paused one
    wakes and sees it too."""
    async with (
        SlackAPI(users={ALICE.id: ALICE}, socket_ack_timeout=1.0) as slack,
        socket_instances(llm, tmp_path, slack, database_url) as processes,
    ):
        store = await Store.open(database_url)
        try:
            sent = [mention(slack, f"C{n}", f"hello {n}", f"EvS{n}") for n in range(3)]
            envelopes = [await slack.send_socket_event(payload) for payload in sent]

            async def greeted() -> bool:
                return all(len(answers(slack, f"C{n}")) == 1 for n in range(3))

            await until(greeted, "three mentions answered")
            accepted = await store.read(owners)
            pid_on = {
                slack.delivered_on[e]: accepted[p["event"]["ts"]]
                for e, p in zip(envelopes, sent, strict=True)
            }
            assert sorted(pid_on.values()) == sorted(p.pid for p in processes)  # one on each

            llm.enqueue(*(Script(tokens=[f"answer{n} ", "more"], delay=0.05) for n in range(5)))
            parent = mention(slack, "C9", "question 0", "EvS10")
            thread = parent["event"]["ts"]
            thread_envelopes = [await slack.send_socket_event(parent)]
            for n in range(1, 5):  # one after another, as a person writes: each stored before the next
                await until(lambda: acked(slack, thread_envelopes[-1]), "the message before acked")
                payload = mention(slack, "C9", f"question {n}", f"EvS{10 + n}", thread_ts=thread)
                thread_envelopes.append(await slack.send_socket_event(payload))
            assert len({slack.delivered_on[e] for e in thread_envelopes}) == WORKERS

            async def thread_answered() -> bool:
                done = [m for m in slack.thread("C9", thread) if m.user == BOT_USER and not m.streaming]
                return len(done) == 5

            await until(thread_answered, "five replies in the thread")
            streams = ("chat.startStream", "chat.stopStream")
            order = [c.method for c in slack.calls if c.method in streams and c.args.get("channel") == "C9"]
            assert order == ["chat.startStream", "chat.stopStream"] * 5
            in_thread = [r.json["messages"][-1]["content"] for r in llm.chat_requests()][-5:]
            assert in_thread == [f"Alice: question {n}" for n in range(5)]

            # Five more at once: they reach the instances in any order, and each is answered, one
            # reply after another.
            burst = [mention(slack, "C9", f"again {n}", f"EvS{15 + n}", thread_ts=thread) for n in range(5)]
            await asyncio.gather(*(slack.send_socket_event(payload) for payload in burst))

            async def burst_answered() -> bool:
                done = [m for m in slack.thread("C9", thread) if m.user == BOT_USER and not m.streaming]
                return len(done) == 10

            await until(burst_answered, "five more replies in the thread")
            order = [c.method for c in slack.calls if c.method in streams and c.args.get("channel") == "C9"]
            assert order == ["chat.startStream", "chat.stopStream"] * 10

            # Pause one instance; the first envelope for its connection goes unacked and is sent again.
            paused_on, paused_pid = next(iter(pid_on.items()))
            paused = next(p for p in processes if p.pid == paused_pid)
            paused.send_signal(signal.SIGSTOP)
            asked_while_paused = []
            for n in range(20, 20 + WORKERS):  # Slack's turn comes to its connection among these
                late = mention(slack, f"C{n}", "are you there?", f"EvS{n}")
                asked_while_paused.append(f"C{n}")
                if slack.delivered_on[first := await slack.send_socket_event(late)] == paused_on:
                    break
            channel = late["event"]["channel"]
            assert slack.delivered_on[first] == paused_on

            async def answered_elsewhere() -> bool:
                return answers(slack, channel) == ["echo: Alice: are you there?"]

            await until(answered_elsewhere, "the envelope delivered again and answered")
            again = [d for d in slack.socket_deliveries if d["payload"] is late]
            assert again[1]["retry_attempt"] == 1 and slack.delivered_on[again[1]["envelope_id"]] != paused_on
            paused.send_signal(signal.SIGCONT)

            await until(lambda: acked(slack, first), "the woken instance acking what it was sent")
            # A later message through the woken instance's connection is answered: it has caught up.
            asked_after = []
            for n in range(30, 30 + WORKERS):
                after = mention(slack, f"C{n}", "still there?", f"EvS{n}")
                asked_after.append(f"C{n}")
                if slack.delivered_on[await slack.send_socket_event(after)] == paused_on:
                    break

            async def caught_up() -> bool:
                return all(answers(slack, c) == ["echo: Alice: still there?"] for c in asked_after)

            await until(caught_up, "a message through the woken instance answered")
        finally:
            await store.close()
    asked = [r.json["messages"][-1]["content"] for r in llm.chat_requests()]
    assert asked.count("Alice: are you there?") == len(asked_while_paused)
    assert asked.count("Alice: still there?") == len(asked_after)
    for channel in asked_while_paused + asked_after:  # each answered once: the redelivered one too
        assert len([m for m in slack.replies(channel) if m.user == BOT_USER]) == 1


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@on_postgres
async def test_socket_mode_instance_killed_after_its_ack_is_answered_by_another(
    llm: LLMServer, tmp_path: Path, database_url: str
) -> None:
    """Its message was in the inbox before the ack, so Slack does not send it again and nothing is
    lost: another instance answers it once the killed one counts as dead."""
    gate = asyncio.Semaphore(0)  # the first request never gets a token
    llm.enqueue(Script(tokens=["never shown"], gate=gate))
    async with (
        SlackAPI(users={ALICE.id: ALICE}) as slack,
        socket_instances(llm, tmp_path, slack, database_url) as processes,
    ):
        store = await Store.open(database_url)
        try:
            payload = mention(slack, "C1", "hello", "EvS1")
            envelope = await slack.send_socket_event(payload)

            async def asked_the_model() -> bool:
                return envelope in slack.socket_acks and len(llm.chat_requests()) == 1

            await until(asked_the_model, "the message acked and its reply under way")
            pid = (await store.read(owners))[payload["event"]["ts"]]
            killed = next(p for p in processes if p.pid == pid)
            killed.kill()

            async def answered() -> bool:
                return answers(slack, "C1") == ["echo: Alice: hello"]

            await until(answered, "another instance answering the killed one's message")
            assert await killed.wait() == -signal.SIGKILL
        finally:
            await store.close()
    assert [d["envelope_id"] for d in slack.socket_deliveries] == [envelope]  # Slack sent it once
    assert [r.json["messages"][-1]["content"] for r in llm.chat_requests()] == ["Alice: hello"] * 2
    assert len([m for m in slack.replies("C1") if m.user == BOT_USER]) == 1
