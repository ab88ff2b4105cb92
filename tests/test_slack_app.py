"""The real Bolt AsyncApp against a loopback Slack Web API and the loopback LLM server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

import adapters.slack
import adapters.slack.surface
from adapters.slack.files import may_carry_token
from adapters.slack.surface import START_CAPACITY, post_limit
from bot.commands import registered
from bot.config import Settings
from bot.engine import Engine
from bot.models import ConversationKey
from bot.streaming import LATENCY_MARGIN
from tests.support.clock import FakeClock
from tests.support.llm_server import LLMServer, Script
from tests.support.loopback import serve_app
from tests.support.search_server import SearchServer
from tests.support.slack_api import (
    BOT_USER,
    HISTORY_METHODS,
    METHOD_SCOPES,
    STREAM_TEXT_LIMIT,
    TEAM,
    SlackAPI,
    signed_headers,
)
from tests.support.slack_harness import (
    ADMIN,
    ALICE,
    BOB,
    GRANTED,
    MANIFEST,
    SECRET,
    Harness,
    running,
    serving,
    until,
)


async def test_mention_sets_status_then_streams_the_reply_into_its_thread(harness: Harness) -> None:
    harness.llm.enqueue(Script(tokens=["Hello", " **there**", ", Alice"], delay=0.05))
    assert await harness.mention("hi") == 200
    await harness.finished_streams(1)
    slack = harness.slack
    methods = slack.methods(
        "assistant.threads.setStatus", "chat.startStream", "chat.appendStream", "chat.stopStream"
    )
    assert methods[0] == "assistant.threads.setStatus"
    assert methods[1] == "chat.startStream" and methods[-1] == "chat.stopStream"
    status = slack.calls_to("assistant.threads.setStatus")[0].args
    assert status["thread_ts"] == "1700000001.000100" and status["channel_id"] == "C1"
    start = slack.calls_to("chat.startStream")[0].args
    assert start["thread_ts"] == "1700000001.000100"
    assert start["recipient_user_id"] == ALICE.id and start["recipient_team_id"] == TEAM
    (reply,) = slack.replies("C1")
    assert reply.text == "Hello **there**, Alice" and not reply.streaming  # standard Markdown in a stream
    assert "chat.postMessage" not in slack.methods()
    request = harness.llm.chat_requests()[0].json
    assert request["messages"][-1]["content"] == "Alice: hi"  # told apart by display name, mention stripped


async def test_stream_failure_falls_back_to_post_and_paced_updates(harness: Harness) -> None:
    harness.slack.fail["chat.startStream"] = "not_allowed_token_type"
    harness.llm.enqueue(
        Script(tokens=["# Title", "\n\nSome **bold** & <b>", " text"] + [" more"] * 5, delay=0.03)
    )
    await harness.mention("hi")
    await until(
        lambda: any("more more more more more" in m.text for m in harness.slack.replies()), "final text"
    )
    (reply,) = harness.slack.replies("C1")
    assert reply.thread_ts == "1700000001.000100"
    assert reply.text.startswith("*Title*\n\nSome *bold* &amp; &lt;b&gt; text")
    posts = harness.slack.calls_to("chat.postMessage")
    assert len(posts) == 1 and posts[0].args["unfurl_links"] in (False, "0", "false")
    updates = harness.slack.calls_to("chat.update")
    assert updates, "the reply grows by chat.update on the same message"
    assert {u.args["ts"] for u in updates} == {reply.ts}


async def test_retries_and_double_delivery_answer_once_even_after_restart(
    harness: Harness, slack_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    slack = harness.slack

    def refused() -> int:
        return sum("was delivered again" in record.getMessage() for record in caplog.records)

    event = {"type": "app_mention", "user": ALICE.id, "text": f"<@{BOT_USER}> hi", "ts": "1700000002.000100"}
    event |= {"channel": "C1", "team": TEAM}
    as_message = {**event, "type": "message", "channel_type": "channel"}
    with caplog.at_level(logging.INFO, logger="bot.engine"):
        assert await harness.post(harness.event(event, "EvA")) == 200
        assert await harness.post(harness.event(event, "EvA"), retry=1) == 200
        assert await harness.post(harness.event(as_message, "EvB")) == 200
        await until(lambda: refused() == 2, "the retry and the message event refused")
        await harness.finished_streams(1)
        # A restarted process (new engine and app on the same database) sees both as answered too.
        async with running(slack_settings()) as (engine, platform):
            restarted = Harness(slack, harness.llm, engine, platform, harness.http)
            assert await restarted.post(harness.event(event, "EvA"), retry=2) == 200
            assert await restarted.post(harness.event(as_message, "EvB"), retry=1) == 200
            await until(lambda: refused() == 4, "both refused after the restart")
    assert len(slack.calls_to("chat.startStream")) == 1
    assert [r.json["messages"][-1]["content"] for r in harness.llm.chat_requests()] == ["Alice: hi"]
    (reply,) = slack.replies("C1")
    assert reply.text == "echo: Alice: hi" and reply.thread_ts == "1700000002.000100"


async def test_bad_or_stale_signature_is_refused(harness: Harness) -> None:
    payload = harness.event(
        {"type": "app_mention", "user": ALICE.id, "text": "hi", "ts": "1.1", "channel": "C1"}
    )
    body = json.dumps(payload)
    wrong = signed_headers(body, "not-the-secret")
    stale = signed_headers(body, SECRET, timestamp=int(time.time()) - 600)
    for headers in (wrong, stale):
        async with harness.http.post(harness.url, data=body, headers=headers) as response:
            assert response.status == 401
    assert harness.llm.chat_requests() == []


async def test_model_per_channel_and_refusal_for_non_admin(harness: Harness) -> None:
    harness.slack.channel_creators["C2"] = BOB.id  # Bob made C2, so he manages it
    assert await harness.command("model openai/gpt-4o-mini", user=ADMIN.id, channel="C1") == 200
    await until(lambda: len(harness.slack.responses) == 1, "the command's answer")
    assert harness.slack.responses[0]["response_type"] == "in_channel"
    await harness.command("model openrouter/xiaomi/mimo-v2-flash", user=BOB.id, channel="C2")
    await harness.command("model openai/gpt-4o-mini", user=ALICE.id, channel="C2")
    await until(lambda: len(harness.slack.responses) == 3, "three answers")
    refusal = harness.slack.responses[2]
    assert refusal["response_type"] == "ephemeral" and "Only channel managers" in refusal["text"]
    await harness.mention("one", channel="C1", ts="1700000003.000100")
    await harness.mention("two", channel="C2", ts="1700000004.000100")
    await harness.finished_streams(2)
    models = {r.json["messages"][-1]["content"]: r.json["model"] for r in harness.llm.chat_requests()}
    assert models == {"Alice: one": "openai/gpt-4o-mini", "Alice: two": "xiaomi/mimo-v2-flash"}


async def test_a_command_keeps_the_lines_and_spacing_of_what_follows_it(harness: Harness) -> None:
    """A system prompt (or a template) typed over several lines reaches the model as typed."""
    prompt = "You are terse.\n\n- answer in   one line\n- never apologise"
    assert await harness.command(f" system\n{prompt}\n", user=ADMIN.id) == 200
    await until(lambda: len(harness.slack.responses) == 1, "the command's answer")
    await harness.mention("hi")
    await harness.finished_streams(1)
    (system,) = [m for m in harness.llm.chat_requests()[0].json["messages"] if m["role"] == "system"]
    assert system["content"].endswith(prompt)


async def test_model_without_name_offers_a_picker_that_switches(harness: Harness) -> None:
    await harness.command("model", user=ADMIN.id)
    await until(lambda: len(harness.slack.responses) == 1, "the picker")
    picker = harness.slack.responses[0]
    select = picker["blocks"][1]["elements"][0]
    assert select["type"] == "static_select" and "openrouter/openai/gpt-4o-mini" in [
        o["value"] for o in select["options"]
    ]
    action = {
        "type": "block_actions",
        "user": {"id": ADMIN.id},
        "team": {"id": TEAM},
        "channel": {"id": "C1"},
        "response_url": f"{harness.slack.base_url}/respond/C1",
        "actions": [
            {
                "action_id": select["action_id"],
                "type": "static_select",
                "block_id": "b",
                "selected_option": {
                    "value": "openrouter/openai/gpt-4o-mini",
                    "text": {"type": "plain_text", "text": "x"},
                },
            }
        ],
    }
    assert await harness.post({"payload": json.dumps(action)}, form=True) == 200
    await until(lambda: len(harness.slack.responses) == 2, "the pick's answer")
    assert "now uses openrouter/openai/gpt-4o-mini" in harness.slack.responses[1]["text"]
    assert (
        await harness.engine.settings_for(ConversationKey("slack", "C1"))
    ).model == "openrouter/openai/gpt-4o-mini"


async def test_help_names_the_slack_subcommands(harness: Harness) -> None:
    await harness.command("help", user=ALICE.id)
    await harness.command("modle gpt", user=ALICE.id)
    await until(lambda: len(harness.slack.responses) == 2, "two answers")
    help_text, unknown = (r["text"] for r in harness.slack.responses)
    lines = help_text.splitlines()
    offered = registered(harness.engine.skills, "slack")
    assert lines[1:] == [f"/parley {command.usage} — {command.summary}" for command in offered]
    assert {"/parley web QUERY", "/parley read URL", "/parley skills [NAME off|on|auto]"} <= {
        line.split(" — ")[0] for line in lines
    }
    assert not any(line.startswith("/parley ask") for line in lines)  # Slack has no /ask: mention Parley
    assert unknown == "Unknown command /modle. Did you mean /parley model? Try /parley help."


async def test_parley_web_posts_the_question_and_streams_a_cited_answer_into_its_thread(
    harness: Harness, search: SearchServer
) -> None:
    assert await harness.command("  web parley release ", user=ALICE.id) == 200
    await harness.finished_streams(1)
    assert search.queries == ["parley release"]
    header, answer = harness.slack.replies("C1")
    assert header.thread_ts is None and header.text == "*Alice* asked with `/parley web`: parley release"
    assert answer.thread_ts == header.ts  # streamed natively into the header's thread
    # Standard Markdown in a stream: the link destination without the <…> that only Discord needs.
    sources = f"**Sources**\n[1] [Parley 2.0 | released]({search.base_url}/release)"
    assert answer.text == f"echo: Alice: parley release\n\n{sources}"
    assert "Parley 2.0 ships streaming replies" in str(harness.llm.chat_requests()[0].json["messages"])
    assert harness.slack.responses == []  # nothing was only for the caller
    # The thread is a conversation of its own that Parley follows without a new mention.
    followup = {"type": "message", "channel": "C1", "channel_type": "channel", "user": BOB.id, "team": TEAM}
    followup |= {"text": "and before that?", "ts": "1700000020.000100", "thread_ts": header.ts}
    await harness.post(harness.event(followup))
    await harness.finished_streams(2)
    contents = [m["content"] for m in harness.llm.chat_requests()[1].json["messages"] if m["role"] == "user"]
    assert contents == ["Alice: parley release", "Bob: and before that?"]


async def test_sources_become_mrkdwn_links_on_the_message_path(
    harness: Harness, search: SearchServer
) -> None:
    harness.slack.fail["chat.startStream"] = "not_allowed_token_type"
    await harness.command("web parley release", user=ALICE.id)
    link = f"[1] <{search.base_url}/release|Parley 2.0 | released>"
    await until(lambda: any(m.text.endswith(link) for m in harness.slack.replies()), "the cited answer")
    header, answer = harness.slack.replies("C1")
    assert answer.thread_ts == header.ts
    assert answer.text == f"echo: Alice: parley release\n\n*Sources*\n{link}"
    posts = harness.slack.calls_to("chat.postMessage")
    assert all(p.args["unfurl_links"] in (False, "0", "false") for p in posts)  # no preview per source


async def test_parley_web_without_a_query_or_a_place_to_post_says_so(
    harness: Harness, search: SearchServer
) -> None:
    await harness.command("web", user=ALICE.id)
    await until(lambda: len(harness.slack.responses) == 1, "the usage answer")
    harness.slack.fail["chat.postMessage"] = "not_in_channel"
    await harness.command("web anything", user=ALICE.id, channel="C7")
    await until(lambda: len(harness.slack.responses) == 2, "the refusal")
    usage, refused = harness.slack.responses
    summary = harness.engine.skills.get("web_search").summary  # type: ignore[union-attr]
    assert usage == {"text": f"Usage: `/parley web QUERY` ({summary}).", "response_type": "ephemeral"}
    assert refused["response_type"] == "ephemeral" and "invite it with `/invite @Parley`" in refused["text"]
    assert search.queries == [] and harness.llm.chat_requests() == []


async def test_long_reply_rolls_over_into_a_new_thread_reply(harness: Harness) -> None:
    harness.slack.fail["chat.startStream"] = "channel_type_not_supported"
    paragraph = "word " * 59 + "end.\n\n"  # 300 characters
    code = "```python\n" + "x = 1\n" * 100 + "```\n\n"
    text = paragraph * 10 + code + paragraph * 8  # about 6,000 characters, a code block across the boundary
    harness.llm.enqueue(Script(tokens=[text[i : i + 500] for i in range(0, len(text), 500)], delay=0.01))
    await harness.mention("long")
    await until(lambda: _settled(harness), "the final render")
    first, second = harness.slack.replies("C1")
    assert first.thread_ts == second.thread_ts == "1700000001.000100"
    assert len(first.text) <= 4000 and len(second.text) <= 4000
    assert (
        first.text.count("```") % 2 == 0 and second.text.count("```") % 2 == 0
    )  # fences closed and reopened
    joined = (first.text + second.text).replace("```\n```", "").replace("\n", "").replace(" ", "")
    assert joined == text.replace("```python", "```").replace("\n", "").replace(" ", "")


def _settled(harness: Harness) -> bool:
    replies = harness.slack.replies()
    return len(replies) == 2 and replies[-1].text.rstrip().endswith("end.")


async def test_model_mentions_are_neutralized_in_both_paths(harness: Harness) -> None:
    ping = "Hey <!channel> and <!here>, <@UBOB> and <!subteam^S1|@devs>, @everyone"
    harness.llm.enqueue(Script(tokens=[ping]), Script(tokens=[ping]))
    await harness.mention("stream")
    await harness.finished_streams(1)
    harness.slack.fail["chat.startStream"] = "not_allowed_token_type"
    await harness.mention("fallback", ts="1700000005.000100")
    await until(lambda: len(harness.slack.calls_to("chat.postMessage")) == 1, "the fallback reply")
    await until(lambda: "everyone" in harness.slack.replies()[-1].text, "its final text")
    for reply in harness.slack.replies():
        for dangerous in ("<!channel>", "<!here>", "<@UBOB>", "<!subteam", "@everyone", "@here", "@channel"):
            assert dangerous not in reply.text
        assert "\u200bchannel" in reply.text and "\u200bdevs" in reply.text


async def test_rate_limited_calls_are_retried_and_the_reply_completes(harness: Harness) -> None:
    harness.slack.rate_limit["chat.startStream"] = 1
    harness.slack.rate_limit["chat.stopStream"] = 1
    await harness.mention("hello")
    await until(
        lambda: any(not m.streaming and m.text for m in harness.slack.replies()),
        "the reply",
    )
    assert harness.slack.replies()[0].text == "echo: Alice: hello"
    assert harness.slack.methods("chat.startStream").count("chat.startStream") == 2


async def test_bots_edits_and_unfollowed_channel_messages_are_ignored(harness: Harness) -> None:
    base = {"type": "message", "channel": "C1", "channel_type": "channel", "team": TEAM}
    await harness.post(harness.event({**base, "user": ALICE.id, "text": "just chatting", "ts": "1.1"}))
    await harness.post(harness.event({**base, "bot_id": "B2", "text": "beep", "ts": "1.2"}))
    edited = {**base, "subtype": "message_changed", "message": {"text": "x"}, "ts": "1.3"}
    await harness.post(harness.event(edited))
    await harness.post(
        harness.event({**base, "user": ALICE.id, "text": "in a thread", "ts": "1.4", "thread_ts": "1.0"})
    )
    await asyncio.sleep(0.2)
    assert harness.llm.chat_requests() == []


async def test_thread_followups_and_direct_messages_are_answered(harness: Harness) -> None:
    await harness.mention("first", ts="1700000006.000100")
    await harness.finished_streams(1)
    followup = {"type": "message", "channel": "C1", "channel_type": "channel", "user": ALICE.id, "team": TEAM}
    followup |= {"text": "and then?", "ts": "1700000007.000100", "thread_ts": "1700000006.000100"}
    await harness.post(harness.event(followup))
    await harness.finished_streams(2)
    second = harness.llm.chat_requests()[1].json["messages"]
    contents = [m["content"] for m in second if m["role"] != "system"]
    assert contents == ["Alice: first", "echo: Alice: first", "Alice: and then?"]  # the thread's memory
    dm = {"type": "message", "channel": "D1", "channel_type": "im", "user": BOB.id, "team": TEAM}
    await harness.post(harness.event({**dm, "text": "psst", "ts": "1700000008.000100"}))
    await until(
        lambda: harness.slack.replies("D1") and "psst" in harness.slack.replies("D1")[0].text, "DM reply"
    )
    (reply,) = harness.slack.replies("D1")
    assert reply.thread_ts is None  # a direct message is answered in the conversation, not in a thread


async def test_text_file_shared_with_a_mention_is_read(harness: Harness) -> None:
    harness.slack.files["notes.txt"] = b"the secret number is 42"
    files = [{"id": "F1", "name": "notes.txt", "mimetype": "text/plain", "size": 23,
              "url_private_download": f"{harness.slack.base_url}/files/notes.txt"},
             {"id": "F2", "name": "gone.pdf", "mimetype": "application/pdf", "size": 5,
              "url_private_download": f"{harness.slack.base_url}/files/missing.pdf"}]  # fmt: skip
    await harness.mention("read this", files=files, subtype="file_share")
    await harness.finished_streams(1)
    content = harness.llm.chat_requests()[0].json["messages"][-1]["content"]
    assert "the secret number is 42" in content
    assert "gone.pdf was not read: Slack answered 404." in harness.slack.replies()[0].text


async def test_images_reach_vision_models_and_are_named_for_others(harness: Harness) -> None:
    harness.slack.files["cat.png"] = b"\x89PNG-cat"
    image = {"name": "cat.png", "mimetype": "image/png", "size": 9}
    image["url_private_download"] = f"{harness.slack.base_url}/files/cat.png"
    await harness.command("model openrouter/openai/gpt-4o-mini", user=ADMIN.id, channel="C1")
    await until(lambda: harness.slack.responses, "the switch")
    await harness.mention("what is this?", channel="C1", files=[image], subtype="file_share")
    await harness.mention(
        "and this?", channel="C2", ts="1700000050.000100", files=[image], subtype="file_share"
    )
    await harness.finished_streams(2)
    # The two mentions are answered concurrently, so their requests may arrive in either order.
    by_model = {r.json["model"]: r.json["messages"][-1]["content"] for r in harness.llm.chat_requests()}
    seen, blind = by_model["openai/gpt-4o-mini"], by_model["xiaomi/mimo-v2-flash"]
    assert {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORy1jYXQ="}} in seen
    assert isinstance(blind, str) and "image_url" not in blind
    (reply,) = harness.slack.replies("C2")
    assert "cat.png is an image and this model does not take images." in reply.text


async def test_provider_and_slack_failures_end_in_a_sentence_and_the_app_goes_on(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.llm.enqueue(Script(status=402, body={"error": {"code": 402, "message": "Insufficient credits"}}))
    await harness.mention("costly")
    await harness.finished_streams(1)
    (reply,) = harness.slack.replies("C1")
    assert reply.text == "_The openrouter account is out of credits; an admin needs to top it up._"
    # Slack refuses both ways of replying in a channel: logged, and the next mention is still answered.
    harness.slack.fail["chat.startStream"] = "channel_not_found"
    harness.slack.fail["chat.postMessage"] = "channel_not_found"
    await harness.mention("lost", channel="C3", ts="1700000040.000100")
    await until(lambda: len(harness.slack.calls_to("chat.postMessage")) >= 1, "the refused post")
    await until(lambda: len(harness.llm.chat_requests()) == 2, "the second request")
    del harness.slack.fail["chat.startStream"], harness.slack.fail["chat.postMessage"]
    await harness.mention("still there?", ts="1700000041.000100")
    await until(
        lambda: any(m.text == "echo: Alice: still there?" for m in harness.slack.replies()), "a reply"
    )
    assert "channel_not_found" in caplog.text


@asynccontextmanager
async def socket_mode_app(slack_settings: Callable[..., Settings], **overrides: Any) -> AsyncIterator[Engine]:
    """Parley on Slack in Socket Mode, as `parley run` starts it."""
    settings = slack_settings(slack_app_token="xapp-test", slack_signing_secret=None, **overrides)
    async with running(settings) as (engine, _platform):
        yield engine


async def socket_mention(slack: SlackAPI, text: str, *, ts: str, event_id: str) -> str:
    event = {"type": "app_mention", "user": ALICE.id, "text": f"<@{BOT_USER}> {text}", "ts": ts}
    payload = {"type": "event_callback", "team_id": TEAM, "event_id": event_id, "event_time": 1}
    return await slack.send_socket_event({**payload, "event": {**event, "channel": "C9", "team": TEAM}})


async def test_socket_mode_through_loopback_connection(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    async with socket_mode_app(slack_settings) as engine:
        envelope = await socket_mention(slack, "over socket", ts="1700000009.1", event_id="EvS")
        await until(lambda: len(slack.calls_to("chat.stopStream")) == 1, "the socket reply")
        assert envelope in slack.socket_acks
        assert slack.calls_to("apps.connections.open")[0].headers["Authorization"] == "Bearer xapp-test"
        assert slack.replies("C9")[0].text == "echo: Alice: over socket"
        key = "slack:C9:1700000009.1"
        for _ in range(100):  # the reply is saved just after its last render
            if await engine.store.count_turns(key) == 2:
                break
            await asyncio.sleep(0.01)
        assert await engine.store.count_turns(key) == 2


async def test_shutdown_mid_reply_closes_the_message(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    llm.enqueue(Script(tokens=["Halfway", " there", " never"], stall_after=2))
    async with socket_mode_app(slack_settings, shutdown_grace_seconds=0):
        await socket_mention(slack, "long one", ts="1700000010.1", event_id="EvT")
        await until(lambda: any("there" in m.text for m in slack.replies()), "the first text")
    (reply,) = slack.replies("C9")
    assert not reply.streaming and reply.text == "Halfway there\n\n_Cut off: Parley is restarting._"


async def test_the_manifest_grants_what_the_app_uses(harness: Harness) -> None:
    harness.slack.files["a.txt"] = b"text"
    file = {"name": "a.txt", "mimetype": "text/plain", "size": 4}
    file["url_private_download"] = f"{harness.slack.base_url}/files/a.txt"
    await harness.mention("hi", files=[file], subtype="file_share")
    await harness.finished_streams(1)
    harness.slack.channel_types |= {"G2": "group", "G3": "mpim", "D4": "im"}
    for channel in ("C2", "G2", "G3", "D4"):  # a manager check in every kind of conversation
        await harness.command("system be brief", user=ALICE.id, channel=channel)
    for channel in ("C2", "G2", "G3", "D4"):  # history in every kind of conversation, and a thread
        harness.slack.say(BOB.id, channel, "hello")
        await harness.platform.history(ConversationKey("slack", channel), limit=5)
    await harness.platform.history(ConversationKey("slack", "C1", "1700000001.000100"), limit=5)
    harness.slack.fail["chat.startStream"] = "not_allowed_token_type"
    await harness.mention("again", ts="1700000030.000100")
    await until(lambda: harness.slack.calls_to("chat.update"), "the fallback path")
    await until(lambda: len(harness.slack.responses) == 4, "the commands' answers")
    assert harness.slack.refused_scopes == []
    assert "a.txt" in str(harness.llm.chat_requests()[0].json["messages"])  # files:read
    assert set(harness.slack.methods()) >= HISTORY_METHODS
    by_type = {"auth.test", "conversations.info", *HISTORY_METHODS}  # their scope follows the channel
    used = set(harness.slack.methods()) - by_type
    assert used <= set(METHOD_SCOPES), "a method the emulator does not know the scope of"
    assert "assistant:write" not in GRANTED  # Slack is retiring it; chat:write covers the status
    (command,) = MANIFEST["features"]["slash_commands"]
    assert command["command"] == "/parley" and command["should_escape"] is False  # text arrives as typed
    events = set(MANIFEST["settings"]["event_subscriptions"]["bot_events"])
    assert {"app_mention", "message.channels", "message.groups", "message.im", "message.mpim"} <= events
    assert {"app_uninstalled", "tokens_revoked"} <= events  # how Parley learns it was removed
    assert {"files:read", "commands", "channels:history", "groups:history", "im:history"} <= GRANTED
    assert "mpim:history" in GRANTED
    assert MANIFEST["settings"]["socket_mode_enabled"] and MANIFEST["settings"]["interactivity"]["is_enabled"]


def test_the_manifest_lists_every_parley_subcommand(engine: Engine) -> None:
    """The usage hint Slack shows while typing /parley is the one command list, in its order."""
    (command,) = MANIFEST["features"]["slash_commands"]
    usages = [entry.usage for entry in registered(engine.skills, "slack")]
    assert command["usage_hint"] == " | ".join(usages)


async def test_the_creator_of_a_group_dm_may_change_its_settings(harness: Harness) -> None:
    harness.slack.channel_types["G7"] = "mpim"  # conversations.info on it needs mpim:read
    harness.slack.channel_creators["G7"] = BOB.id
    await harness.command("system Answer in French.", user=BOB.id, channel="G7")
    await until(lambda: harness.slack.responses, "the answer")
    (answer,) = harness.slack.responses
    assert answer["response_type"] == "in_channel" and "Only channel managers" not in answer["text"]
    assert harness.slack.refused_scopes == []


async def test_a_missing_scope_is_named_once_in_the_log(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    assert harness.slack.scopes is not None
    harness.slack.scopes.discard("mpim:read")  # an app installed before the manifest asked for it
    harness.slack.channel_types |= {"G7": "mpim", "G8": "mpim"}
    harness.slack.channel_creators |= {"G7": BOB.id, "G8": ALICE.id}
    with caplog.at_level(logging.WARNING):
        await harness.command("system one", user=BOB.id, channel="G7")
        await until(lambda: len(harness.slack.responses) == 1, "the first answer")
        await harness.command("system two", user=ALICE.id, channel="G8")
        await until(lambda: len(harness.slack.responses) == 2, "the second answer")
    assert all("Only channel managers" in r["text"] for r in harness.slack.responses)
    assert harness.slack.refused_scopes == [("conversations.info", "mpim:read")] * 2
    warnings = [r.getMessage() for r in caplog.records if "mpim:read" in r.getMessage()]
    assert len(warnings) == 1 and "reinstall the app" in warnings[0] and "conversations.info" in warnings[0]


def _mention_body(harness: Harness) -> str:
    event = {
        "type": "app_mention",
        "user": ALICE.id,
        "text": f"<@{BOT_USER}> hi",
        "ts": "1.1",
        "channel": "C1",
    }
    return json.dumps(harness.event(event))


async def test_unsigned_requests_get_401_and_unparsable_signed_ones_400_without_a_traceback(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    body = _mention_body(harness)
    now = int(time.time())
    good = signed_headers(body, SECRET)
    unsigned = {
        "no signature": {},
        "a timestamp that is not a number": {**good, "X-Slack-Request-Timestamp": "soon"},
        "digits that are not ASCII": {**good, "X-Slack-Request-Timestamp": "١٧٠٠٠٠٠٠٠٠"},
        "a stale timestamp": signed_headers(body, SECRET, timestamp=now - 600),
        "a timestamp from the future": signed_headers(body, SECRET, timestamp=now + 600),
        "the wrong secret": signed_headers(body, "not-the-secret"),
        "a signature that is not ASCII": {**good, "X-Slack-Signature": "v0=é"},
    }
    unparsable: dict[str, tuple[str | bytes, str]] = {
        "malformed JSON": ('{"type": "event_callback", "event": ', "application/json"),
        "a JSON array": ("[1, 2, 3]", "application/json"),
        "a JSON string": ('"event_callback"', "application/json"),
        "a broken form payload": ("payload=%7B%22type%22%3A", "application/x-www-form-urlencoded"),
        "a form payload that is an array": ("payload=%5B1%5D", "application/x-www-form-urlencoded"),
        "bytes that are not UTF-8": (b"\xff\xfe{}", "application/json"),
    }
    statuses = {}
    with caplog.at_level(logging.DEBUG):
        for what, headers in unsigned.items():
            sent = {"Content-Type": "application/json", **headers}
            async with harness.http.post(harness.url, data=body, headers=sent) as response:
                statuses[what] = response.status
        for what, (raw, content_type) in unparsable.items():
            sent = {"Content-Type": content_type, **signed_headers(raw, SECRET)}
            async with harness.http.post(harness.url, data=raw, headers=sent) as response:
                statuses[what] = response.status
    assert statuses == {**dict.fromkeys(unsigned, 401), **dict.fromkeys(unparsable, 400)}
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text
    assert harness.llm.chat_requests() == [] and harness.slack.methods() == ["auth.test"]  # at start
    assert await harness.mention("still answering") == 200  # and a good request still goes through


async def test_an_unsigned_ssl_check_is_answered_and_nothing_else(harness: Harness) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with harness.http.post(harness.url, data="ssl_check=1&token=x", headers=form) as response:
        assert response.status == 200
    async with harness.http.post(harness.url, data="ssl_check=1&command=%2Fparley", headers=form) as response:
        assert response.status == 200  # answered as a check: the command is not run
    assert harness.slack.methods() == ["auth.test"] and harness.slack.responses == []


async def test_past_the_stream_budget_replies_post_and_edit_rather_than_queue(harness: Harness) -> None:
    count = START_CAPACITY + 4  # more replies in a minute than Slack allows chat.startStream calls
    for index in range(count):  # each in a channel of its own: the budget at stake is the workspace's
        assert await harness.mention(f"q{index}", channel=f"C{index}", ts=f"1700000100.{index:06d}") == 200

    expected = {f"echo: Alice: q{index}" for index in range(count)}

    def shown() -> set[str]:
        return {m.text for m in harness.slack.replies() if not m.streaming}

    await until(lambda: expected <= shown(), "every reply")
    assert harness.slack.throttled == {}  # not one 429: nothing queued behind Slack's limits either
    assert len(harness.slack.calls_to("chat.startStream")) == START_CAPACITY
    posts = harness.slack.calls_to("chat.postMessage")
    assert len(posts) == count - START_CAPACITY and all(p.args["thread_ts"] for p in posts)


async def test_stream_text_over_12000_characters_goes_out_in_pieces(harness: Harness) -> None:
    text = "A long answer, word after word. " * 600  # 19,200 characters in one chunk
    harness.llm.enqueue(Script(tokens=[text]))
    await harness.mention("write a lot")
    await harness.finished_streams(1)
    stream_calls = [c for c in harness.slack.calls if c.method.endswith("Stream")]
    # Two calls at least (the stream's start, then its stop or an append): whether the first render
    # comes before the text's end or is the final one depends on the loop, not on the rule.
    assert len(stream_calls) >= 2 and all(
        len(harness.slack._streamed(c.args)) <= STREAM_TEXT_LIMIT for c in stream_calls
    )
    assert harness.slack.methods("chat.update", "chat.postMessage") == []  # the stream took it all
    (reply,) = harness.slack.replies("C1")
    assert reply.text == text


async def test_in_a_slack_connect_channel_the_stream_goes_to_the_askers_team(harness: Harness) -> None:
    await harness.mention("hello from next door", team="T2", user_team="T2")  # installed in T1
    await harness.finished_streams(1)
    start = harness.slack.calls_to("chat.startStream")[0].args
    assert (start["recipient_user_id"], start["recipient_team_id"]) == (ALICE.id, "T2")


async def test_the_thinking_status_stays_until_the_first_text(
    slack: SlackAPI,
    llm: LLMServer,
    slack_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(adapters.slack.surface, "STATUS_REFRESH", 0.05)  # Slack's two minutes, shrunk
    llm.enqueue(Script(tokens=["too late"], first_delay=30.0))
    async with serving(slack, llm, slack_settings(first_token_timeout=2.0)) as harness:
        await harness.mention("slow one")
        await until(lambda: len(slack.calls_to("assistant.threads.setStatus")) >= 3, "a refreshed status")
        assert slack.status("C1", "1700000001.000100") == "is thinking…"
        await harness.finished_streams(1)
    first_text = slack.methods().index("chat.startStream")
    assert "assistant.threads.setStatus" not in slack.methods()[first_text:]
    assert slack.status("C1", "1700000001.000100") == ""
    assert slack.replies("C1")[0].text == "_openrouter took too long to answer; try again._"


async def test_file_links_outside_slack_never_get_the_token(harness: Harness) -> None:
    seen: list[str | None] = []

    async def elsewhere(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.append(request.headers.get("Authorization"))
        return aiohttp.web.Response(text="the secret number is 42")

    other = aiohttp.web.Application()
    other.router.add_get("/{name}", elsewhere)
    runner, port = await serve_app(other)
    try:
        files = [{"name": "lure.txt", "mimetype": "text/plain", "size": 23,
                  "url_private_download": f"http://127.0.0.1:{port}/lure.txt"},
                 {"name": "plain.txt", "mimetype": "text/plain", "size": 23,
                  "url_private_download": "http://files.slack.com/files-pri/T1-F1/plain.txt"}]  # fmt: skip
        await harness.mention("read these", files=files, subtype="file_share")
        await harness.finished_streams(1)
    finally:
        await runner.cleanup()
    assert seen == []  # not fetched at all, so the token went nowhere
    reply = harness.slack.replies("C1")[0].text
    assert "lure.txt was not read: its link does not point to Slack." in reply
    assert "plain.txt was not read: its link does not point to Slack." in reply


def test_the_token_goes_only_to_slack_file_hosts_over_https() -> None:
    api = "https://slack.com/api/"
    allowed = [
        "https://files.slack.com/files-pri/T1-F1/notes.txt",
        "https://files.slack.com:443/files-pri/T1-F1/notes.txt",
        "https://FILES.SLACK.COM./files-pri/T1-F1/notes.txt",
        "https://files.slack-gov.com/files-pri/T1-F1/notes.txt",
    ]
    refused = [
        "http://files.slack.com/files-pri/T1-F1/notes.txt",
        "https://files.slack.com.example.test/notes.txt",
        "https://example.test/files.slack.com/notes.txt",
        "https://notslack.com/notes.txt",
        "https://user@files.slack.com/notes.txt",
        "https://files.slack.com:8443/notes.txt",
        "https://files.slack.com:port/notes.txt",
        "file:///etc/passwd",
        "",
    ]
    assert [url for url in allowed if not may_carry_token(url, api)] == []
    assert [url for url in refused if may_carry_token(url, api)] == []
    loopback = "http://127.0.0.1:8080/api/"  # SLACK_API_URL pointed at a gateway or a test Slack
    assert may_carry_token("http://127.0.0.1:8080/files/a.txt", loopback)
    assert not may_carry_token("http://127.0.0.1:9090/files/a.txt", loopback)


async def test_an_envelope_acked_too_late_is_delivered_again_and_answered_once(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    slack.socket_ack_timeout = 0.0  # every ack arrives after Slack stopped waiting for it
    async with socket_mode_app(slack_settings):
        await socket_mention(slack, "twice?", ts="1700000011.1", event_id="EvR")
        await until(lambda: len(slack.socket_deliveries) == 4, "Slack's three redeliveries")
        await until(lambda: len(slack.calls_to("chat.stopStream")) == 1, "the reply")
        await until(lambda: len(slack.socket_acks) == 4, "every delivery acked")
    assert [(d["retry_attempt"], d["retry_reason"]) for d in slack.socket_deliveries] == [
        (0, ""),
        (1, "timeout"),
        (2, "timeout"),
        (3, "timeout"),
    ]
    assert len(llm.chat_requests()) == 1 and len(slack.calls_to("chat.startStream")) == 1


async def test_a_final_that_fits_its_message_does_not_wait_for_the_channels_post_slot(
    harness: Harness,
) -> None:
    """On the message path the reply's first post takes the channel's post slot (one a second); its final
    text fits that message, so it is one chat.update and goes out while the slot is still taken."""
    clock = FakeClock()
    harness.engine.pacer.clock = clock  # the pacer's time stands still: the post slot stays taken
    harness.slack.fail["chat.startStream"] = "not_allowed_token_type"
    gate = asyncio.Semaphore(0)
    harness.llm.enqueue(Script(tokens=["Hello", " there", ", all done"], gate=gate))
    await harness.mention("hi")
    gate.release()
    await until(lambda: [c.ok for c in harness.slack.calls_to("chat.postMessage")] == [True], "the post")
    gate.release()
    gate.release()
    (reply,) = harness.slack.replies("C1")
    await until(lambda: reply.text == "Hello there, all done", "the final text")
    assert clock.now() == 1000.0 and not harness.engine.pacer.has_room([post_limit(TEAM, "C1")])
    assert harness.slack.calls_to("chat.update")[-1].args["ts"] == reply.ts
    assert harness.slack.throttled == {}


async def test_a_final_that_runs_onto_a_new_page_waits_for_the_channels_post_slot(
    harness: Harness,
) -> None:
    clock = FakeClock()
    harness.engine.pacer.clock = clock
    harness.slack.fail["chat.startStream"] = "not_allowed_token_type"
    gate = asyncio.Semaphore(0)
    rest = "".join(f" paragraph {i}: " + "word " * 60 + "\n\n" for i in range(15))  # two pages' worth
    harness.llm.enqueue(Script(tokens=["Start.", rest], gate=gate))
    await harness.mention("write a lot")
    gate.release()
    await until(lambda: len(harness.slack.calls_to("chat.postMessage")) == 1, "the first post")
    gate.release()
    post_free = clock.now() + 1.0 + LATENCY_MARGIN
    await until(
        lambda: any(wake >= post_free - 1e-6 for wake in clock.wakes),
        "the final waiting for the channel's post slot",
    )
    assert len(harness.slack.calls_to("chat.postMessage")) == 1
    assert harness.slack.replies("C1")[0].text == "Start."
    await clock.advance(1.0 + LATENCY_MARGIN)
    await until(lambda: len(harness.slack.replies("C1")) == 2, "the second page")
    pages = harness.slack.replies("C1")
    assert " ".join(p.text for p in pages).split() == f"Start.{rest}".split()
    assert harness.slack.throttled == {}
