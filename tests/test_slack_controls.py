"""A reply's controls on Slack: Regenerate and another model's menu under every reply that ended (streamed
or posted), clicks delivered as signed block_actions requests, refusals only to the clicker, stop by
command, and clicks that still work after a restart. The real Bolt app against the loopback Slack."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.controls import REGENERATE, REGENERATE_WITH, STOP
from bot.config import Settings
from bot.controls import REFUSED
from tests.support.llm_server import LLMServer, Script
from tests.support.slack_api import SlackAPI, SlackMessage
from tests.support.slack_harness import ALICE, BOB, Harness, serving, until

OTHER_MODEL = "openrouter/openai/gpt-4o-mini"


def elements(message: SlackMessage) -> dict[str, dict[str, Any]]:
    return {e["action_id"]: e for b in message.blocks if b["type"] == "actions" for e in b["elements"]}


async def click(harness: Harness, payload: dict[str, Any]) -> int:
    return await harness.post({"payload": json.dumps(payload)}, form=True)  # signed, as Slack signs it


async def test_an_ended_stream_offers_regenerate_and_another_model_that_answers_again(
    harness: Harness,
) -> None:
    harness.llm.enqueue(Script(tokens=["Paris."]), Script(tokens=["It is Paris."]))
    await harness.mention("capital of France?")
    await harness.finished_streams(1)
    (reply,) = harness.slack.replies("C1")
    assert reply.text == "Paris." and set(elements(reply)) == {REGENERATE, REGENERATE_WITH}
    menu = elements(reply)[REGENERATE_WITH]
    assert OTHER_MODEL in [o["value"] for o in menu["options"]]

    refused = harness.slack.block_action(reply.ts, REGENERATE_WITH, user=BOB.id, value=OTHER_MODEL)
    assert await click(harness, refused) == 200
    await until(lambda: len(harness.slack.responses) == 1, "the refusal")
    assert harness.slack.responses[0] == {
        "text": REFUSED,
        "response_type": "ephemeral",
        "replace_original": False,
    }
    assert (
        await click(
            harness, harness.slack.block_action(reply.ts, REGENERATE_WITH, user=ALICE.id, value=OTHER_MODEL)
        )
        == 200
    )
    await harness.finished_streams(2)
    first, again = harness.slack.thread("C1", "1700000001.000100")
    assert (first.text, again.text) == ("Paris.", "It is Paris.")  # the first stays, as an alternative
    assert harness.llm.chat_requests()[-1].json["model"] == "openai/gpt-4o-mini"
    assert len(harness.llm.chat_requests()) == 2


async def test_a_posted_reply_carries_its_text_in_sections_above_the_controls(harness: Harness) -> None:
    harness.slack.fail["chat.startStream"] = "not_allowed_token_type"  # the message path
    long = "word " * 700  # past one section's 3,000 characters, within one page
    harness.llm.enqueue(Script(tokens=[long.strip()]))
    await harness.mention("talk")
    await until(lambda: any(REGENERATE in elements(m) for m in harness.slack.replies("C1")), "the controls")
    (reply,) = harness.slack.replies("C1")
    sections = [b["text"]["text"] for b in reply.blocks if b["type"] == "section"]
    assert len(sections) == 2 and "".join(sections).split() == reply.text.split()
    assert list(elements(reply)) == [REGENERATE, REGENERATE_WITH]


async def test_a_click_after_a_restart_regenerates_and_twice_delivered_is_answered_once(
    slack: SlackAPI,
    llm: LLMServer,
    slack_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.engine")
    settings = slack_settings()
    async with serving(slack, llm, settings) as first:
        await first.mention("hello")
        await first.finished_streams(1)
    (reply,) = slack.replies("C1")
    async with serving(slack, llm, settings) as restarted:
        payload = slack.block_action(reply.ts, REGENERATE, user=ALICE.id)
        assert await click(restarted, payload) == 200
        assert await click(restarted, payload) == 200  # Slack sending the same click again
        await until(lambda: "was delivered again" in caplog.text, "the second delivery recognised")
        await restarted.finished_streams(2)
    assert [m.text for m in slack.thread("C1", "1700000001.000100")] == ["echo: Alice: hello"] * 2
    assert len(llm.chat_requests()) == 2


async def test_parley_stop_stops_the_askers_reply_in_its_thread(harness: Harness) -> None:
    gate = asyncio.Semaphore(1)
    harness.llm.enqueue(Script(tokens=["Once", " upon"], gate=gate))
    await harness.mention("a story")
    await until(lambda: bool(harness.slack.replies("C1")), "the first text")
    await harness.command("stop", user=BOB.id)
    await until(lambda: len(harness.slack.responses) == 1, "the refusal")
    assert harness.slack.responses[0]["text"] == REFUSED
    await harness.command("stop", user=ALICE.id)
    await harness.finished_streams(1)
    (reply,) = harness.slack.replies("C1")
    assert reply.text == "Once\n\n_Stopped._" and set(elements(reply)) == {REGENERATE, REGENERATE_WITH}
    await until(lambda: bool(harness.llm.closed_by_client), "the provider request closed")


async def test_editing_the_question_regenerates_in_place_and_deleting_it_forgets_it(harness: Harness) -> None:
    await harness.mention("two plus two?")
    await harness.finished_streams(1)
    (reply,) = harness.slack.replies("C1")
    assert reply.text == "echo: Alice: two plus two?"
    ts = "1700000001.000100"
    parent = harness.slack.messages[ts]
    # Someone replying in the thread "changes" its parent too; that is no edit.
    before = {"type": "message", "user": ALICE.id, "text": parent.text, "ts": ts}
    reply_count = {
        "type": "message",
        "subtype": "message_changed",
        "channel": "C1",
        "hidden": True,
        "message": {**before, "text": "<@UBOT> changed, but not edited", "reply_count": 1},
        "previous_message": before,
    }
    assert await harness.post(harness.event(reply_count)) == 200
    edited = {
        **reply_count["message"],
        "text": "<@UBOT> three plus three?",
        "edited": {"user": ALICE.id, "ts": "1700000002.000000"},
    }
    assert await harness.post(harness.event({**reply_count, "message": edited})) == 200
    await until(lambda: reply.text == "echo: Alice: three plus three?", "the answer rewritten in place")
    assert len(harness.slack.replies("C1")) == 1 and len(harness.llm.chat_requests()) == 2
    await until(lambda: set(elements(reply)) == {REGENERATE, REGENERATE_WITH}, "the controls kept")
    deleted = {"type": "message", "subtype": "message_deleted", "channel": "C1", "hidden": True,
               "deleted_ts": ts, "previous_message": edited}  # fmt: skip
    assert await harness.post(harness.event(deleted)) == 200
    key = f"slack:C1:{ts}"
    for _ in range(500):
        if not (await harness.engine.store.recall(key, 10_000))[0]:
            break
        await asyncio.sleep(0.02)
    assert (await harness.engine.store.recall(key, 10_000))[0] == []


async def test_a_posted_reply_shows_stop_while_it_is_written_and_a_click_stops_it(harness: Harness) -> None:
    harness.slack.fail["chat.startStream"] = "not_allowed_token_type"  # the message path, as in a DM
    gate = asyncio.Semaphore(1)
    harness.llm.enqueue(Script(tokens=["Once", " upon", " a time"], gate=gate))
    await harness.mention("a story")
    await until(lambda: any(STOP in elements(m) for m in harness.slack.replies("C1")), "the Stop button")
    (reply,) = harness.slack.replies("C1")
    assert reply.text == "Once" and list(elements(reply)) == [STOP]
    assert await click(harness, harness.slack.block_action(reply.ts, STOP, user=BOB.id)) == 200
    await until(lambda: len(harness.slack.responses) == 1, "the refusal")
    assert harness.slack.responses[0]["text"] == REFUSED and not harness.llm.closed_by_client
    assert await click(harness, harness.slack.block_action(reply.ts, STOP, user=ALICE.id)) == 200
    await until(lambda: reply.text == "Once\n\n_Stopped._", "the stopped reply")
    await until(lambda: set(elements(reply)) == {REGENERATE, REGENERATE_WITH}, "Regenerate in place of Stop")
    await until(lambda: bool(harness.llm.closed_by_client), "the provider request closed")


async def test_the_loopback_slack_refuses_blocks_past_block_kits_limits(slack: SlackAPI) -> None:
    slack.limits.clear()  # many posts in a row; the rate limits are tested on their own
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    button = {"type": "button", "action_id": "b", "text": {"type": "plain_text", "text": "Go"}}
    option = {"text": {"type": "plain_text", "text": "o"}, "value": "v"}
    menu = {"type": "static_select", "action_id": "s", "options": [option]}
    refused = {
        "a section over 3,000": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}],
        "51 blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}] * 51,
        "an action id twice": [{"type": "actions", "elements": [button, button]}],
        "button text over 75": [
            {"type": "actions", "elements": [{**button, "text": {"type": "plain_text", "text": "x" * 76}}]}
        ],
        "101 options": [{"type": "actions", "elements": [{**menu, "options": [option] * 101}]}],
        "an option value over 150": [
            {"type": "actions", "elements": [{**menu, "options": [{**option, "value": "v" * 151}]}]}
        ],
        "26 elements": [
            {"type": "actions", "elements": [{**button, "action_id": f"b{n}"} for n in range(26)]}
        ],
    }
    for what, blocks in refused.items():
        with pytest.raises(SlackApiError) as error:
            await client.chat_postMessage(channel="C1", text="x", blocks=blocks)
        assert error.value.response["error"] == "invalid_blocks", what
    posted = await client.chat_postMessage(
        channel="C1", text="x", blocks=[{"type": "actions", "block_id": "k", "elements": [button, menu]}]
    )
    with pytest.raises(AssertionError):
        slack.block_action(posted["ts"], "not-shown", user=ALICE.id)
    assert slack.block_action(posted["ts"], "s", user=ALICE.id, value="v")["actions"][0]["block_id"] == "k"
