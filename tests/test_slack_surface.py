"""The Slack reply surface against the loopback Web API: what each render costs and what people see."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.surface import PAGE_LIMIT, SlackSurface
from tests.support.slack_api import SlackAPI


@pytest.fixture
async def slack() -> AsyncIterator[SlackAPI]:
    async with SlackAPI() as api:
        yield api


def surface(slack: SlackAPI, thread_ts: str | None = "1.1") -> SlackSurface:
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    return SlackSurface(client, channel="C1", thread_ts=thread_ts, team_id="T1", user_id="U1")


async def test_stream_sends_only_new_text_and_counts_its_calls(slack: SlackAPI) -> None:
    reply = surface(slack)
    assert reply.budget.bucket == "slack-stream:T1" and reply.budget.min_interval == 1.0
    assert await reply.render("Hello", final=False) == 1  # chat.startStream
    assert await reply.render("Hello", final=False) == 0  # nothing new, nothing sent
    assert await reply.render("Hello wor", final=False) == 1
    assert await reply.render("Hello world", final=True) == 1
    assert slack.methods() == ["chat.startStream", "chat.appendStream", "chat.stopStream"]
    assert [slack._streamed(c.args) for c in slack.calls] == ["Hello", " wor", "ld"]
    (message,) = slack.replies()
    assert message.text == "Hello world" and not message.streaming


async def test_short_reply_rendered_once_starts_and_stops_the_stream(slack: SlackAPI) -> None:
    assert await surface(slack).render("Done.", final=True) == 2
    assert slack.replies()[0].text == "Done."


async def test_expired_stream_continues_by_chat_update_on_the_same_message(slack: SlackAPI) -> None:
    reply = surface(slack)
    await reply.render("First **part**", final=False)
    slack.expire_streams()  # Slack ends streams after a few minutes
    assert await reply.render("First **part** and more", final=False) == 2  # failed append + update
    assert reply.budget.bucket == "slack:T1" and reply.budget.capacity == 45
    await reply.render("First **part** and more, done.", final=True)
    (message,) = slack.replies()
    assert message.text == "First *part* and more, done."  # mrkdwn from here on
    assert slack.methods()[-2:] == ["chat.update", "chat.update"]


async def test_partial_mention_is_not_streamed_before_it_is_neutralized(slack: SlackAPI) -> None:
    reply = surface(slack)
    await reply.render("Hi <!chan", final=False)
    await reply.render("Hi <!channel> all", final=True)
    sent = "".join(slack._streamed(c.args) for c in slack.calls)
    assert "<!" not in sent and sent == "Hi @\u200bchannel all"


async def test_top_level_reply_posts_then_updates_and_rolls_over(slack: SlackAPI) -> None:
    reply = surface(slack, thread_ts=None)
    await reply.start()  # no thread, so no status call
    assert await reply.render("a " * 100, final=False) == 0  # a post: not in chat.update's budget
    long = ("word " * 60 + "\n\n") * 30  # about 9,000 characters
    assert await reply.render(long, final=True) == 1  # update page 1, then post pages 2 and 3
    pages = slack.replies()
    assert len(pages) == 3 and all(len(p.text) <= PAGE_LIMIT for p in pages)
    assert all(p.thread_ts is None for p in pages)
    assert "".join(p.text for p in pages).split() == long.split()
    posts = slack.calls_to("chat.postMessage")
    assert all(c.args["unfurl_links"] is False and c.args["unfurl_media"] is False for c in posts)


async def test_status_failure_is_ignored(slack: SlackAPI) -> None:
    slack.fail["assistant.threads.setStatus"] = "not_allowed"
    await surface(slack).start()
    assert slack.methods() == ["assistant.threads.setStatus"]


async def test_workspace_that_refuses_streams_starts_later_replies_on_the_message_path(
    slack: SlackAPI,
) -> None:
    slack.fail["chat.startStream"] = "not_allowed_token_type"
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    refused: set[str] = set()
    first = SlackSurface(
        client, channel="C1", thread_ts="1.1", team_id="T1", user_id="U1", streamless_teams=refused
    )
    assert first.budget.bucket == "slack-stream:T1"
    assert await first.render("hello", final=True) == 1  # the refused start, then chat.postMessage
    second = SlackSurface(
        client, channel="C2", thread_ts="2.1", team_id="T1", user_id="U1", streamless_teams=refused
    )
    assert second.budget.bucket == "slack:T1"
    await second.render("again", final=True)
    assert slack.methods() == ["chat.startStream", "chat.postMessage", "chat.postMessage"]
    assert [m.thread_ts for m in slack.replies()] == ["1.1", "2.1"]


async def test_a_link_streamed_in_pieces_arrives_whole(slack: SlackAPI) -> None:
    reply = surface(slack)
    text = "See [1] [Docs](<https://me@x.test/a>)"
    for end in (10, 20, text.index("@") + 3, len(text) - 1):
        await reply.render(text[:end], final=False)
    await reply.render(text, final=True)
    sent = [slack._streamed(c.args) for c in slack.calls]
    assert all("<" not in part for part in sent)
    assert slack.replies()[0].text == "See [1] [Docs](https://me@x.test/a)"
