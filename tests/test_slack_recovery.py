"""`parley run` on Slack killed with SIGKILL mid-reply, then started again on the same database."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from bot.engine import RESTARTED_NOTE
from bot.store import Store
from tests.support.cli import CHECKOUT, spawn_parley
from tests.support.llm_server import LLMServer, Script
from tests.support.slack_api import BOT_USER, SlackAPI, SlackUser
from tests.support.slack_harness import channel_event

ALICE = SlackUser("UALICE", "Alice")
CHANNELS = ("C1", "C2", "C3")


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for a state of the processes or the emulator; fails with `what` rather than hanging."""
    for _ in range(1200):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def start(llm: LLMServer, workdir: Path, slack: SlackAPI) -> asyncio.subprocess.Process:
    env = {
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_APP_TOKEN": slack.app_token,
        "SLACK_API_URL": slack.api_url,
        "SLACK_RENDER_INTERVAL": "0.05",
        "PYTHONPATH": CHECKOUT,
    }
    return await spawn_parley(llm, workdir, "run", **env)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
async def test_a_killed_process_repairs_its_cut_replies_and_answers_what_waited(
    llm: LLMServer, tmp_path: Path
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/data/parley.db"
    gates = [asyncio.Semaphore(0) for _ in CHANNELS]  # each token waits for a release
    llm.enqueue(
        *(Script(tokens=[f"word{i} " for i in range(40)], gate=gate, stall_after=20) for gate in gates)
    )
    async with SlackAPI(users={ALICE.id: ALICE}) as slack:
        first = await start(llm, tmp_path, slack)
        store: Store | None = None
        try:
            for index, channel in enumerate(CHANNELS):
                mention = channel_event(f"<@{BOT_USER}> tell me a story", channel, f"1700000010.00000{index}")
                await asyncio.wait_for(slack.send_socket_event(mention), 30)
            for gate in gates:
                gate.release()
            store = await Store.open(database)

            async def shown() -> bool:
                assert store is not None
                return len([r for r in await store.streaming("slack") if r.refs is not None]) == 3

            await until(shown, "each reply's first text, and where it shows, stored")
            for gate in gates:  # the rest streams at once, faster than the store saves it
                for _ in range(19):
                    gate.release()

            async def streamed() -> bool:
                return all(
                    any(m.streaming and "word19" in m.text for m in slack.replies(channel))
                    for channel in CHANNELS
                )

            await until(streamed, "twenty words shown in each reply")
            # Alice goes on in the first thread; her next message waits for her reply there.
            followup = channel_event("and then?", "C1", "1700000011.000000", thread_ts="1700000010.000000")
            await slack.send_socket_event(followup)

            async def accepted() -> bool:
                assert store is not None
                return len(await store.pending("slack")) == 4

            await until(accepted, "all four messages stored")
        finally:
            os.kill(first.pid, signal.SIGKILL)
            await first.wait()
            if store is not None:
                await store.close()
        assert first.returncode == -signal.SIGKILL
        cut = {channel: slack.replies(channel)[0] for channel in CHANNELS}

        second = await start(llm, tmp_path, slack)
        try:

            async def recovered() -> bool:
                repaired = all(RESTARTED_NOTE in m.text and not m.streaming for m in cut.values())
                answers = [m for m in slack.replies("C1") if m.text == "echo: Alice: and then?"]
                return repaired and len(answers) == 1 and not answers[0].streaming

            await until(recovered, "the cut replies repaired and the waiting message answered")
        finally:
            second.terminate()
            _out, err = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 0, err.decode()[-2000:]

    store = await Store.open(database)
    try:
        for channel, message in cut.items():
            turns = await store.history(f"slack:{channel}:1700000010.00000{CHANNELS.index(channel)}", 10)
            reply = next(turn for turn in turns if turn.role == "assistant")  # the one cut off
            # What Slack shows is what was stored, which is less than the stream had shown, and the note.
            assert message.text == f"{reply.content}\n\n_{RESTARTED_NOTE}_"
            assert "word19" not in reply.content
        assert await store.pending("slack") == []
        assert await store.count_turns("slack:C1:1700000010.000000") == 4  # two questions, two answers
    finally:
        await store.close()
    asked = [r.json["messages"][-1]["content"] for r in llm.chat_requests()]
    assert sorted(asked) == ["Alice: and then?"] + ["Alice: tell me a story"] * 3  # nothing asked twice
    assert len(slack.calls_to("chat.startStream")) == 4
