"""/parley compare and /parley arena on Slack: the question posted, both answers in its thread (A
streamed to the asker, B posted), a ballot whose buttons work after a restart, and each vote answered
only to the voter. The real Bolt app against the loopback Slack, which refuses blocks Slack refuses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from adapters.slack.votes import ACTION_PREFIX, BLOCK_PREFIX
from bot.compare import BALLOT
from bot.config import Settings
from tests.support.llm_server import LLMServer, Script
from tests.support.slack_api import SlackAPI, SlackMessage
from tests.support.slack_harness import ALICE, BOB, Harness, serving, until

MINI, MIMO = "openrouter/openai/gpt-4o-mini", "openrouter/xiaomi/mimo-v2-flash"


async def click(harness: Harness, payload: dict[str, Any]) -> int:
    return await harness.post({"payload": json.dumps(payload)}, form=True)  # signed, as Slack signs it


def ballot_in(slack: SlackAPI) -> SlackMessage | None:
    return next((m for m in slack.replies("C1") if m.text == BALLOT), None)


async def test_compare_answers_in_the_thread_and_votes_work_after_a_restart(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    gate = asyncio.Semaphore(0)
    llm.by_model["openai/gpt-4o-mini"] = Script(tokens=["Four", " (mini)."], gate=gate)
    llm.by_model["xiaomi/mimo-v2-flash"] = Script(tokens=["4", " (mimo)."], gate=gate)
    settings = slack_settings()
    async with serving(slack, llm, settings) as harness:
        assert await harness.command(f"compare {MINI} {MIMO} What is 2+2?", user=ALICE.id) == 200
        await until(lambda: len(llm.chat_requests()) == 2, "both sides asked at once")
        for _ in range(4):
            gate.release()
        await until(lambda: ballot_in(slack) is not None, "the ballot")
    header, *answers, ballot = slack.replies("C1")
    assert header.text == f"*Alice* asked with `/parley compare`: {MINI} {MIMO} What is 2+2?"
    assert all(m.thread_ts == header.ts for m in [*answers, ballot])
    texts = sorted(m.text for m in answers)
    assert texts[0].startswith("**Answer A**\n\n")  # streamed to the asker: Markdown
    assert texts[1].startswith("*Answer B*\n\n")  # posted in the thread: mrkdwn
    assert {t.split("\n\n", 1)[1] for t in texts} == {"Four (mini).", "4 (mimo)."}
    assert not any("gpt-4o" in m.text or "mimo-v2" in m.text for m in (*answers, ballot))
    (actions,) = [b for b in ballot.blocks if b["type"] == "actions"]
    assert actions["block_id"].startswith(BLOCK_PREFIX)
    assert [e["action_id"] for e in actions["elements"]] == [
        f"{ACTION_PREFIX}a", f"{ACTION_PREFIX}b", f"{ACTION_PREFIX}tie", f"{ACTION_PREFIX}bad"
    ]  # fmt: skip
    answer_a = next(t for t in texts if "Answer A" in t)
    a_model, b_model = (MINI, MIMO) if "(mini)" in answer_a else (MIMO, MINI)

    async with serving(slack, llm, settings) as restarted:
        assert (
            await click(restarted, slack.block_action(ballot.ts, f"{ACTION_PREFIX}a", user=ALICE.id)) == 200
        )
        await until(lambda: len(slack.responses) == 1, "the reveal")
        assert slack.responses[0] == {
            "text": f"Thanks: you voted A is better. A was {a_model}, B was {b_model}.",
            "response_type": "ephemeral",
            "replace_original": False,
        }
        assert (
            await click(restarted, slack.block_action(ballot.ts, f"{ACTION_PREFIX}b", user=ALICE.id)) == 200
        )
        await until(lambda: len(slack.responses) == 2, "the second vote refused")
        assert slack.responses[1]["text"].startswith("You already voted on this comparison")
        assert (
            await click(restarted, slack.block_action(ballot.ts, f"{ACTION_PREFIX}bad", user=BOB.id)) == 200
        )
        await until(lambda: len(slack.responses) == 3, "Bob's vote")
        await restarted.command("arena", user=BOB.id)
        await until(lambda: len(slack.responses) == 4, "the leaderboard")
    board = slack.responses[3]["text"]
    assert board.startswith("Arena of this workspace: 2 votes (1 both bad, not rated).")
    assert f"{a_model} — " in board and "1 won, 0 lost, 0 tied; 1 both bad" in board


async def test_compare_in_a_mention_compares_on_your_last_question_in_the_thread(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    async with serving(slack, llm, slack_settings()) as harness:
        await harness.mention("capital of France?")
        await harness.finished_streams(1)
        thread = "1700000001.000100"
        await harness.mention(f"/compare {MINI} {MIMO}", ts=None, thread_ts=thread)
        await until(lambda: ballot_in(slack) is not None, "the ballot")
    first, mention, *answers, ballot = slack.thread("C1", thread)
    assert first.text == "echo: Alice: capital of France?" and mention.text.endswith(
        f"/compare {MINI} {MIMO}"
    )
    assert len(answers) == 2 and ballot.text == BALLOT
    assert all(a.text.endswith("\n\necho: Alice: capital of France?") for a in answers)
    asked = [r.json["messages"][-1]["content"] for r in llm.chat_requests()[1:]]
    assert asked == ["Alice: capital of France?"] * 2
