"""Slack through the platform port: history with paging and permalinks, replies nobody asked for,
replies reopened after a crash, and the channel_history skill reading a channel in a real reply."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.engine import RESTARTED_NOTE
from bot.models import ConversationKey
from bot.platform import HistoryUnavailable
from bot.reply import extend
from tests.support.llm_server import LLMServer, Script
from tests.support.slack_api import BOT_USER, TEAM, SlackAPI
from tests.support.slack_harness import (
    ALICE,
    BOB,
    Harness,
    serving,
    until,
)

WORKSPACE = "https://loopback.slack.test/"  # what the loopback auth.test names as the workspace URL


def link(channel: str, ts: str, thread_ts: str | None = None) -> str:
    shown = f"{WORKSPACE}archives/{channel}/p{ts.replace('.', '')}"
    return f"{shown}?thread_ts={thread_ts}&cid={channel}" if thread_ts else shown


async def post_as_parley(harness: Harness, key: ConversationKey, text: str) -> str:
    """A message Parley posts on its own (nobody asked): its ts."""
    before = {m.ts for m in harness.slack.replies()}
    await harness.engine.pacer.renderer(await harness.platform.surface_for(key)).finish(text)
    (posted,) = [m for m in harness.slack.replies() if m.ts not in before]
    return posted.ts


# History


async def test_channel_history_pages_past_slacks_page_size_with_names_and_permalinks(
    harness: Harness,
) -> None:
    slack, platform = harness.slack, harness.platform
    said = [slack.say((ALICE, BOB)[i % 2].id, "C1", f"message {i}") for i in range(250)]
    slack.say(BOB.id, "C1", f"<@{BOB.id}> has joined the channel", subtype="channel_join")
    channel = ConversationKey("slack", "C1")
    mine = await post_as_parley(harness, channel, "Noted, all of it.")
    slack.say(ALICE.id, "C1", "in a thread, not in the channel", thread_ts=said[3].ts)

    entries = await platform.history(channel, limit=300)
    assert [e.id for e in entries] == [m.ts for m in said] + [mine]  # oldest first; the join left out
    assert [(e.author_name, e.text) for e in entries[:2]] == [("Alice", "message 0"), ("Bob", "message 1")]
    assert [e.by_parley for e in entries] == [False] * 250 + [True]
    assert (entries[-1].author_name, entries[-1].author_id) == ("Parley", BOT_USER)
    assert entries[7].permalink == link("C1", said[7].ts) and entries[-1].permalink == link("C1", mine)
    assert entries[7].created_at == float(said[7].ts)
    calls = slack.calls_to("conversations.history")
    assert len(calls) == 2 and [c.args["limit"] for c in calls] == ["200", "200"]  # Slack's page size, twice

    assert await platform.history(channel, limit=30) == entries[-30:]
    assert await platform.history(channel, limit=50, before=entries[100].id) == entries[50:100]
    assert await platform.history(channel, limit=50, after=entries[100].id) == entries[101:151]
    assert await platform.history(channel, limit=300, after=entries[10].id) == entries[11:]  # pages forward
    assert (
        await platform.history(channel, limit=5, after=entries[10].id, before=entries[13].id)
        == entries[11:13]
    )
    assert await platform.permalink(channel, said[7].ts) == entries[7].permalink


async def test_thread_history_pages_replies_each_linked_into_its_thread(harness: Harness) -> None:
    slack, platform = harness.slack, harness.platform
    slack.say(BOB.id, "C1", "before the thread")
    parent = slack.say(ALICE.id, "C1", "A thread about <#C2|launch> with <@UBOB>")
    replies = [slack.say((BOB, ALICE)[i % 2].id, "C1", f"reply {i}", thread_ts=parent.ts) for i in range(250)]
    thread = ConversationKey("slack", "C1", parent.ts)
    mine = await post_as_parley(harness, thread, "My two cents.")
    slack.say(BOB.id, "C1", "after, in the channel")

    entries = await platform.history(thread, limit=1000)
    assert [e.id for e in entries] == [parent.ts, *(r.ts for r in replies), mine]
    assert entries[0].text == "A thread about #launch with @Bob"  # as a person reads it
    assert entries[0].permalink == link("C1", parent.ts)
    assert entries[1].permalink == link("C1", replies[0].ts, parent.ts)  # ?thread_ts=…&cid=C1
    assert entries[-1].by_parley and entries[-1].permalink == link("C1", mine, parent.ts)
    calls = slack.calls_to("conversations.replies")
    assert len(calls) == 2 and all(c.args["limit"] == "200" for c in calls)
    assert "conversations.history" not in slack.methods()  # people replied: the thread stands alone

    assert await platform.history(thread, limit=20) == entries[-20:]
    assert await platform.history(thread, limit=10, before=entries[50].id) == entries[40:50]
    assert await platform.history(thread, limit=10, after=entries[50].id) == entries[51:61]
    assert await platform.permalink(thread, replies[0].ts) == entries[1].permalink
    assert await platform.permalink(thread, parent.ts) == entries[0].permalink


async def test_a_thread_that_is_only_its_question_continues_the_channel_before_it(harness: Harness) -> None:
    slack, platform = harness.slack, harness.platform
    earlier = [slack.say(BOB.id, "C2", "Let's ship on Friday."), slack.say(ALICE.id, "C2", "Agreed.")]
    await harness.mention("what did we decide above?", channel="C2", ts=None)
    await harness.finished_streams(1)
    question = [m for m in slack.messages.values() if m.user == ALICE.id and m.channel == "C2"][-1]
    (answer,) = slack.replies("C2")
    thread = ConversationKey("slack", "C2", question.ts)

    entries = await platform.history(thread, limit=10)
    assert [e.id for e in entries] == [earlier[0].ts, earlier[1].ts, question.ts, answer.ts]
    assert [e.permalink for e in entries[:3]] == [link("C2", m.ts) for m in (*earlier, question)]
    assert entries[2].text == "@Parley what did we decide above?"
    assert await platform.history(thread, limit=10, before=question.ts) == entries[:2]
    assert await platform.history(thread, limit=1, after=earlier[0].ts) == entries[1:2]
    # Once someone replies in it, the thread is a conversation of its own.
    followup = slack.say(BOB.id, "C2", "and Monday for the notes", thread_ts=question.ts)
    assert [e.id for e in await platform.history(thread, limit=10)] == [question.ts, answer.ts, followup.ts]


async def test_history_of_a_channel_or_thread_that_is_not_there_is_refused(harness: Harness) -> None:
    platform = harness.platform
    with pytest.raises(HistoryUnavailable, match="channel_not_found"):
        await platform.history(ConversationKey("slack", "#general"), limit=5)
    harness.slack.channels = {"C1"}
    with pytest.raises(HistoryUnavailable, match="channel_not_found"):
        await platform.history(ConversationKey("slack", "C9"), limit=5)
    with pytest.raises(
        HistoryUnavailable, match=r"conversations.replies in slack:C1:1700000000.000001 \(thread_not_found\)"
    ):
        await platform.history(ConversationKey("slack", "C1", "1700000000.000001"), limit=5)
    assert await platform.history(ConversationKey("slack", "C1"), limit=5) == []


async def test_the_loopback_history_refuses_what_slack_refuses(slack: SlackAPI) -> None:
    """The emulator's paging is as strict as Slack's, so the tests above mean something."""
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    said = [slack.say(ALICE.id, "C1", f"m{i}") for i in range(5)]
    refusals = {
        "invalid_cursor": {"cursor": "not a cursor"},
        "invalid_ts_oldest": {"oldest": "yesterday"},
        "invalid_ts_latest": {"latest": "soon"},
    }
    for error, args in refusals.items():
        with pytest.raises(SlackApiError, match=error):
            await client.conversations_history(channel="C1", **args)
    page = await client.conversations_history(channel="C1", limit=2)
    assert [m["ts"] for m in page["messages"]] == [said[4].ts, said[3].ts] and page["has_more"]
    rest = await client.conversations_history(channel="C1", cursor=page["response_metadata"]["next_cursor"])
    assert [m["ts"] for m in rest["messages"]] == [m.ts for m in said[2::-1]] and not rest["has_more"]
    exact = await client.conversations_history(channel="C1", oldest=said[1].ts, latest=said[3].ts)
    assert [m["ts"] for m in exact["messages"]] == [said[2].ts]  # both ends left out
    inclusive = await client.conversations_history(
        channel="C1", oldest=said[1].ts, latest=said[3].ts, inclusive=True
    )
    assert len(inclusive["messages"]) == 3
    with pytest.raises(SlackApiError, match="thread_not_found"):
        await client.conversations_replies(channel="C1", ts="1.000001")
    alone = await client.conversations_replies(channel="C1", ts=said[0].ts)
    assert [m["ts"] for m in alone["messages"]] == [said[0].ts]  # a message without replies
    slack.scopes = {"channels:read"}
    with pytest.raises(SlackApiError, match="missing_scope"):
        await client.conversations_history(channel="C1")
    assert slack.refused_scopes == [("conversations.history", "channels:history")]


# Replies nobody asked for


async def test_a_reply_nobody_asked_for_posts_and_edits_without_a_stream(harness: Harness) -> None:
    slack = harness.slack
    keys = [ConversationKey("slack", "C3"), ConversationKey("slack", "C3", slack.say(BOB.id, "C3", "hi").ts)]
    for count, key in enumerate(keys, start=1):
        renderer = harness.engine.pacer.renderer(await harness.platform.surface_for(key))
        renderer.update("The weekly digest")
        await until(lambda count=count: len(slack.replies("C3")) == count, "the post")
        await renderer.finish("The weekly digest: all **quiet**.")
    channel_post, thread_post = slack.replies("C3")
    assert (channel_post.thread_ts, thread_post.thread_ts) == (None, keys[1].thread_id)
    assert channel_post.text == thread_post.text == "The weekly digest: all *quiet*."  # mrkdwn
    assert slack.methods("chat.startStream", "chat.appendStream", "chat.stopStream") == []
    edited = [call.args["ts"] for call in slack.calls_to("chat.update")]
    assert edited == [channel_post.ts, thread_post.ts]


# Reopening a reply a crash cut short


async def test_reopen_stops_an_open_stream_and_shows_the_stored_text_with_the_note(harness: Harness) -> None:
    slack, platform = harness.slack, harness.platform
    stored = "Here is the plan: first,"
    for channel in ("C4", "C5"):  # in C5, Slack had ended the stream itself by the time Parley is back
        question = slack.say(ALICE.id, channel, f"<@{BOT_USER}> plan?")
        key = ConversationKey("slack", channel, question.ts)
        asker = {"channel": channel, "thread_ts": question.ts, "user": ALICE.id, "user_team": TEAM}
        surface = await platform.surface_for(key, {**asker, "team": TEAM})
        await surface.render(f"{stored} we **draft**, then we ship and", final=False)  # shown, not yet stored
        refs = surface.refs
        assert refs is not None and refs["open"] is True and slack.messages[refs["stream"]].streaming
        if channel == "C5":
            slack.expire_streams()
        reopened = await platform.reopen(key, refs)
        await harness.engine.pacer.renderer(reopened).finish(extend(stored, RESTARTED_NOTE))
        (message,) = slack.replies(channel)
        assert message.ts == refs["stream"] and not message.streaming
        assert message.text == f"{stored}\n\n_{RESTARTED_NOTE}_"
    stops = slack.calls_to("chat.stopStream")
    assert [(c.args["ts"], c.ok) for c in stops] == [
        (slack.replies("C4")[0].ts, True),
        (slack.replies("C5")[0].ts, False),  # message_not_in_streaming_state: updated all the same
    ]


async def test_reopen_rewrites_a_paged_reply_and_deletes_the_pages_it_no_longer_needs(
    harness: Harness,
) -> None:
    slack, platform = harness.slack, harness.platform
    question = slack.say(ALICE.id, "C6", f"<@{BOT_USER}> write a lot")
    key = ConversationKey("slack", "C6", question.ts)
    surface = await platform.surface_for(key)  # the message path: posted, edited, rolled over into pages
    paragraphs = [f"Paragraph {i}: " + "word " * 60 + "\n\n" for i in range(40)]  # about 13,000 characters
    for count in range(2, 41, 2):
        await surface.render("".join(paragraphs[:count]), final=False)
    refs = surface.refs
    assert refs is not None and len(refs["pages"]) >= 3
    stored = "".join(paragraphs[:15]).rstrip()  # what the store had: about 5,000 characters, two pages
    reopened = await platform.reopen(key, refs)
    await harness.engine.pacer.renderer(reopened).finish(extend(stored, RESTARTED_NOTE))
    pages = slack.replies("C6")
    assert [p.ts for p in pages] == refs["pages"][:2] and all(p.thread_ts == question.ts for p in pages)
    assert " ".join(p.text for p in pages).split() == f"{stored}\n\n_{RESTARTED_NOTE}_".split()
    assert [c.args["ts"] for c in slack.calls_to("chat.delete")] == refs["pages"][:1:-1]
    assert "chat.stopStream" not in slack.methods()


# The channel_history skill in a reply


async def test_the_model_reads_the_channel_through_the_port(harness: Harness) -> None:
    slack = harness.slack
    ship = slack.say(BOB.id, "C7", "Let's ship on Friday.")  # never addressed to Parley
    slack.say(ALICE.id, "C7", "Agreed, <@UBOB>.")
    harness.llm.enqueue(
        Script(tokens=[], tool_calls=[("channel_history", '{"limit": 20}')]), Script(tokens=["Friday."])
    )
    await harness.mention("when do we ship?", channel="C7", ts=None)
    await until(lambda: any(m.text == "Friday." for m in slack.replies("C7")), "the answer")
    block = harness.llm.chat_requests()[-1].json["messages"][-1]["content"]
    assert f"Bob: Let's ship on Friday. <{link('C7', ship.ts)}>" in block
    assert "Alice: Agreed, @Bob." in block and "@Parley when do we ship?" in block


async def test_a_missing_history_scope_is_named_once_and_the_reply_goes_on_without_it(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    slack = harness.slack
    assert slack.scopes is not None
    slack.scopes.discard("groups:history")  # an app installed before the manifest asked for it
    slack.channel_types["G8"] = "group"
    for _ in range(2):
        harness.llm.enqueue(
            Script(tokens=[], tool_calls=[("channel_history", "{}")]), Script(tokens=["Without it."])
        )
    with caplog.at_level(logging.WARNING):
        for ts in ("1700000061.000100", "1700000062.000100"):
            await harness.mention("what did we say?", channel="G8", ts=ts)
            await until(lambda ts=ts: _answered(slack, "G8", ts), "the answer")
    (first, second) = slack.replies("G8")
    note = "_Parley could not read the messages here, so this answer is without them._"
    assert first.text == second.text == f"Without it.\n\n{note}"
    assert slack.refused_scopes == [("conversations.replies", "groups:history")] * 2
    warnings = [r.getMessage() for r in caplog.records if "groups:history" in r.getMessage()]
    assert len(warnings) == 1 and "reinstall the app" in warnings[0]


def _answered(slack: SlackAPI, channel: str, thread_ts: str) -> bool:
    return any(m.thread_ts == thread_ts and not m.streaming and m.text for m in slack.replies(channel))


# When Slack takes Parley away


async def test_wait_closed_returns_when_the_app_is_uninstalled_or_its_token_revoked(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    for removal in ({"type": "app_uninstalled"}, {"type": "tokens_revoked", "tokens": {"bot": [BOT_USER]}}):
        async with serving(slack, llm, slack_settings()) as harness:
            closed = asyncio.ensure_future(harness.platform.wait_closed())
            other = {"type": "tokens_revoked", "tokens": {"oauth": ["UALICE"], "bot": ["UOTHER"]}}
            await harness.post(harness.event(other))  # someone else's token: nothing to do with Parley
            await harness.mention("still here?", ts=(ts := f"17000001{len(slack.replies()):02d}.000100"))
            await until(lambda ts=ts: _answered(slack, "C1", ts), "the answer")
            assert not closed.done()
            await harness.post(harness.event(removal))
            await asyncio.wait_for(closed, 10)
