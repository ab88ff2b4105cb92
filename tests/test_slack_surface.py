"""The Slack reply surface against the loopback Web API: what each render costs and what people see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.surface import (
    PAGE_LIMIT,
    STATUS,
    STATUS_REFRESH,
    STREAM_TEXT_LIMIT,
    SlackSurface,
    method_limit,
    post_limit,
)
from bot.controls import ReplyControls
from bot.models import RateLimit
from bot.streaming import LATENCY_MARGIN, Pacer
from tests.support.clock import FakeClock, settle
from tests.support.slack_api import SlackAPI
from tests.support.slack_harness import until

START, STOP = method_limit("T1", "chat.startStream"), method_limit("T1", "chat.stopStream")
APPEND, UPDATE = method_limit("T1", "chat.appendStream"), method_limit("T1", "chat.update")


@pytest.fixture
async def slack() -> AsyncIterator[SlackAPI]:
    async with SlackAPI() as api:
        yield api


def surface(slack: SlackAPI, thread_ts: str | None = "1.1") -> SlackSurface:
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    return SlackSurface(client, channel="C1", thread_ts=thread_ts, team_id="T1", user_id="U1")


async def test_stream_sends_only_new_text_and_counts_its_calls(slack: SlackAPI) -> None:
    reply = surface(slack)
    assert reply.budget.min_interval == 1.0
    assert reply.budget.cost(final=False) == (START,) and reply.budget.cost(final=True) == (START, STOP)
    assert await reply.render("Hello", final=False) == [START]
    assert reply.budget.cost(final=False) == (APPEND,) and reply.budget.cost(final=True) == (STOP,)
    assert await reply.render("Hello", final=False) == []  # nothing new, nothing sent
    assert await reply.render("Hello wor", final=False) == [APPEND]
    assert await reply.render("Hello world", final=True) == [STOP]
    assert slack.methods() == ["chat.startStream", "chat.appendStream", "chat.stopStream"]
    assert [slack._streamed(c.args) for c in slack.calls] == ["Hello", " wor", "ld"]
    (message,) = slack.replies()
    assert message.text == "Hello world" and not message.streaming


async def test_short_reply_rendered_once_starts_and_stops_the_stream(slack: SlackAPI) -> None:
    assert await surface(slack).render("Done.", final=True) == [START, STOP]
    assert slack.replies()[0].text == "Done."


async def test_expired_stream_continues_by_chat_update_on_the_same_message(slack: SlackAPI) -> None:
    reply = surface(slack)
    await reply.render("First **part**", final=False)
    slack.expire_streams()  # Slack ends streams after a few minutes
    assert await reply.render("First **part** and more", final=False) == [APPEND, UPDATE]  # refused, then
    assert reply.budget.cost(final=False) == (UPDATE,)
    assert reply.budget.cost(final=True) == (UPDATE, post_limit("T1", "C1"))
    assert UPDATE.capacity == 45 and UPDATE.window == 60.0
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
    assert reply.budget.cost(final=False) == (post_limit("T1", "C1"),)
    assert await reply.render("a " * 100, final=False) == [post_limit("T1", "C1")]  # paced per channel
    assert reply.budget.cost(final=False) == (UPDATE,)
    long = ("word " * 60 + "\n\n") * 30  # about 9,000 characters
    # Update page 1, then post pages 2 and 3.
    assert await reply.render(long, final=True) == [UPDATE, post_limit("T1", "C1"), post_limit("T1", "C1")]
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
    assert first.budget.cost(final=True) == (START, STOP)
    assert await first.render("hello", final=True) == [START, post_limit("T1", "C1")]  # refused, then
    second = SlackSurface(
        client, channel="C2", thread_ts="2.1", team_id="T1", user_id="U1", streamless_teams=refused
    )
    assert second.budget.cost(final=True) == (post_limit("T1", "C2"),)
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


async def test_a_reply_posts_and_edits_when_the_stream_budget_is_spent(slack: SlackAPI) -> None:
    clock = FakeClock()
    pacer = Pacer(clock)
    pacer.bucket_for(START).charge(clock.now(), START.capacity)  # every start of this minute is used
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    reply = SlackSurface(
        client, channel="C1", thread_ts="1.1", team_id="T1", user_id="U1", room=pacer.has_room
    )
    assert reply.budget.cost(final=False) == (post_limit("T1", "C1"),)  # no waiting for a start slot
    await reply.render("Hello **there**", final=False)
    await reply.render("Hello **there**, done", final=True)
    assert slack.methods() == ["chat.postMessage", "chat.update"]
    (message,) = slack.replies()
    assert message.thread_ts == "1.1" and message.text == "Hello *there*, done"


async def test_a_reply_streams_while_starts_and_stops_have_room(slack: SlackAPI) -> None:
    pacer = Pacer(FakeClock())
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    reply = SlackSurface(
        client, channel="C1", thread_ts="1.1", team_id="T1", user_id="U1", room=pacer.has_room
    )
    assert reply.budget.cost(final=False) == (START,)
    await reply.render("streamed", final=True)
    assert slack.methods() == ["chat.startStream", "chat.stopStream"]


async def test_a_reply_whose_stream_has_not_started_posts_once_the_start_budget_fills(
    slack: SlackAPI,
) -> None:
    """Another instance can take the last start slot between this reply's choice and its first render
    (the pacer's copy of the budget learns it when its own take is refused): post rather than wait."""
    clock = FakeClock()
    pacer = Pacer(clock)
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    reply = SlackSurface(
        client, channel="C1", thread_ts="1.1", team_id="T1", user_id="U1", room=pacer.has_room
    )
    assert reply.budget.cost(final=False) == (START,)
    pacer.bucket_for(START).charge(clock.now(), START.capacity)
    assert reply.budget.cost(final=False) == (post_limit("T1", "C1"),)
    pacer.bucket_for(START).refund(clock.now())  # a path once left is not taken again
    assert reply.budget.cost(final=False) == (post_limit("T1", "C1"),)
    await reply.render("posted", final=True)
    assert slack.methods() == ["chat.postMessage"]


async def test_stream_text_goes_out_in_pieces_of_at_most_12000_characters(slack: SlackAPI) -> None:
    reply = surface(slack)
    text = "".join(f"line {i:05d} of a long answer\n" for i in range(1400))  # 39,200 characters
    assert await reply.render(text[:20_000], final=False) == [START, APPEND]
    assert await reply.render(text, final=True) == [APPEND, STOP]
    sizes = [len(slack._streamed(c.args)) for c in slack.calls]
    assert max(sizes) == STREAM_TEXT_LIMIT and all(size <= STREAM_TEXT_LIMIT for size in sizes)
    assert slack.methods("chat.update", "chat.postMessage") == []  # the stream took all of it
    (message,) = slack.replies()
    assert message.text == text and not message.streaming


async def test_a_long_first_and_final_text_starts_appends_and_stops(slack: SlackAPI) -> None:
    text = "x" * (STREAM_TEXT_LIMIT * 2 + 5)
    assert await surface(slack).render(text, final=True) == [START, APPEND, STOP]
    assert slack.methods() == ["chat.startStream", "chat.appendStream", "chat.stopStream"]
    assert slack.replies()[0].text == text


async def test_the_stream_names_the_askers_team_as_its_recipient(slack: SlackAPI) -> None:
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    reply = SlackSurface(
        client, channel="C1", thread_ts="1.1", team_id="T1", user_id="UEXT", recipient_team_id="T2"
    )
    await reply.render("hello, neighbour", final=True)
    start = slack.calls_to("chat.startStream")[0].args
    assert (start["recipient_user_id"], start["recipient_team_id"]) == ("UEXT", "T2")
    assert reply.budget.cost(final=True) == (STOP,)  # budgets stay the installing workspace's


async def test_the_status_is_kept_alive_until_the_first_text(slack: SlackAPI) -> None:
    clock = FakeClock()
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    reply = SlackSurface(client, channel="C1", thread_ts="1.1", team_id="T1", user_id="U1", clock=clock)
    await reply.start()
    assert slack.status("C1", "1.1") == STATUS
    for count in (2, 3):  # a provider that takes minutes to answer: the status is set again in time
        await clock.advance(STATUS_REFRESH)
        await until(lambda n=count: len(slack.calls_to("assistant.threads.setStatus")) == n, "a status")
    assert slack.status_timeout > STATUS_REFRESH
    await reply.render("At last", final=False)
    assert slack.status("C1", "1.1") == ""  # the stream's message replaced it
    assert clock.sleepers == 0  # nothing is left to set it again
    await reply.render("At last, done", final=True)
    assert slack.methods("assistant.threads.setStatus") == ["assistant.threads.setStatus"] * 3


async def test_a_reply_that_could_post_nothing_clears_its_status(slack: SlackAPI) -> None:
    slack.fail["chat.startStream"] = slack.fail["chat.postMessage"] = "restricted_action"
    clock = FakeClock()
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    reply = SlackSurface(client, channel="C1", thread_ts="1.1", team_id="T1", user_id="U1", clock=clock)
    await reply.start()
    with pytest.raises(Exception, match="restricted_action"):
        await reply.render("Nowhere to go", final=True)
    assert [c.args["status"] for c in slack.calls_to("assistant.threads.setStatus")] == [STATUS, ""]
    assert slack.status("C1", "1.1") == "" and clock.sleepers == 0


async def test_a_reply_ended_without_a_render_stops_refreshing_its_status(slack: SlackAPI) -> None:
    clock = FakeClock()
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    reply = SlackSurface(client, channel="C1", thread_ts="1.1", team_id="T1", user_id="U1", clock=clock)
    await reply.start()
    await settle()
    assert clock.sleepers == 1
    await reply.close()
    assert clock.sleepers == 0


async def test_status_arguments_are_checked_like_slack_does(slack: SlackAPI) -> None:
    """The emulator refuses a status call Slack would refuse, so the tests above mean something."""
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    refused = {
        "invalid_thread_ts": {"channel_id": "C1", "thread_ts": "soon", "status": STATUS},
        "channel_not_found": {"channel_id": "#general", "thread_ts": "1.1", "status": STATUS},
        "invalid_arguments": {"channel_id": "C1", "thread_ts": "1.1", "status": STATUS,
                              "loading_messages": ["x"] * 11},
    }  # fmt: skip
    for error, args in refused.items():
        with pytest.raises(Exception, match=error):
            await client.assistant_threads_setStatus(**args)
    assert slack.statuses == {}


async def test_a_page_that_fills_up_leaves_the_next_post_to_the_next_render(slack: SlackAPI) -> None:
    reply = surface(slack, thread_ts=None)
    post = post_limit("T1", "C1")
    paragraphs = [f"Paragraph {i}: " + "word " * 60 + "\n\n" for i in range(20)]  # 6,500 characters
    assert await reply.render("".join(paragraphs[:5]), final=False) == [post]
    assert await reply.render("".join(paragraphs[:16]), final=False) == [UPDATE]  # page 1 is full
    assert len(slack.replies()) == 1
    assert reply.budget.cost(final=False) == (post,)  # so the next render waits for the channel
    assert reply.budget.owed_to_final() == (UPDATE,)
    assert await reply.render("".join(paragraphs[:18]), final=False) == [post]
    assert await reply.render("".join(paragraphs), final=True) == [UPDATE]
    pages = slack.replies()
    assert len(pages) == 2 and all(len(page.text) <= PAGE_LIMIT for page in pages)
    assert "".join(page.text for page in pages).split() == "".join(paragraphs).split()


async def test_a_final_on_the_message_path_reserves_a_post_it_may_need(slack: SlackAPI) -> None:
    reply = surface(slack, thread_ts=None)
    post = post_limit("T1", "C1")
    paragraph = "word " * 60 + "\n\n"
    await reply.render(paragraph, final=False)
    assert reply.budget.cost(final=False) == (UPDATE,)
    assert reply.budget.cost(final=True) == (UPDATE, post)  # the final may run onto a new page
    assert await reply.render(paragraph * 14, final=True) == [UPDATE, post]  # and this one did
    assert len(slack.replies()) == 2


async def final(reply: SlackSurface, text: str) -> list[RateLimit]:
    """Render `text` as the final, checking that the surface said beforehand what it would call."""
    said = reply.final_cost(text)
    assert await reply.render(text, final=True) == said
    return said


async def test_a_final_that_fits_the_page_costs_one_update_and_no_post(slack: SlackAPI) -> None:
    reply = surface(slack, thread_ts=None)
    paragraph = "word " * 60 + "\n\n"
    await reply.render(paragraph, final=False)
    assert reply.final_cost(paragraph) == []  # nothing new to show: nothing to call
    reply.show_controls(ReplyControls(1))
    assert await final(reply, paragraph * 3) == [UPDATE]
    assert slack.methods() == ["chat.postMessage", "chat.update"]


async def test_a_final_that_runs_onto_new_pages_costs_a_post_for_each(slack: SlackAPI) -> None:
    reply = surface(slack, thread_ts=None)
    post = post_limit("T1", "C1")
    paragraph = "word " * 60 + "\n\n"
    assert reply.final_cost(paragraph) == [post]  # nothing posted yet
    await reply.render(paragraph, final=False)
    assert await final(reply, paragraph * 30) == [UPDATE, post, post]
    assert len(slack.replies()) == 3


async def test_a_reopened_final_costs_its_stop_its_rewrites_and_its_deletes(slack: SlackAPI) -> None:
    del slack.limits["chat.postMessage"]  # four pages posted at once, unpaced: what is tested is the cost
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    paged = surface(slack, thread_ts=None)
    paragraphs = [f"Paragraph {i}: " + "word " * 60 + "\n\n" for i in range(40)]  # about 13,000 characters
    for count in range(2, 41, 2):
        await paged.render("".join(paragraphs[:count]), final=False)
    assert paged.refs is not None and len(paged.refs["pages"]) == 4
    reopened = SlackSurface.reopened(client, paged.refs, channel="C1")
    delete = method_limit("T1", "chat.delete")
    assert await final(reopened, "".join(paragraphs[:15])) == [UPDATE, UPDATE, delete, delete]
    streamed = surface(slack)
    await streamed.render("Started,", final=False)
    assert streamed.refs is not None
    reopened = SlackSurface.reopened(client, streamed.refs, channel="C1")
    assert await final(reopened, "Started, and cut short") == [STOP, UPDATE]


async def test_a_final_on_the_stream_costs_its_start_pieces_and_stop(slack: SlackAPI) -> None:
    assert await final(surface(slack), "short") == [START, STOP]
    reply = surface(slack)
    await reply.render("Hello", final=False)
    assert await final(reply, "Hello " + "x" * (STREAM_TEXT_LIMIT * 2)) == [APPEND, APPEND, STOP]
    assert await final(surface(slack), "y" * (STREAM_TEXT_LIMIT + 1)) == [START, STOP]


async def test_finals_refused_a_stream_at_once_wait_their_turns_at_the_channels_post_slot(
    slack: SlackAPI,
) -> None:
    """Two replies in one channel end before their first render, and the workspace refuses both
    streams: nothing renders after a final, so the one without the channel's post slot waits for it
    rather than post over the limit."""
    slack.fail["chat.startStream"] = "not_allowed_token_type"
    clock = FakeClock()
    pacer = Pacer(clock)
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    refused = set[str]()
    finishing = []
    for thread, text in (("1.1", "First, whole"), ("2.1", "Second, whole")):
        reply = SlackSurface(
            client, channel="C1", thread_ts=thread, team_id="T1", user_id="U1", clock=clock,
            streamless_teams=refused, room=pacer.has_room, take=pacer.take,
        )  # fmt: skip
        finishing.append(asyncio.create_task(pacer.renderer(reply).finish(text)))
    await until(lambda: sum(task.done() for task in finishing) == 1 and clock.sleepers == 1, "one shown")
    assert len(slack.calls_to("chat.postMessage")) == 1  # the other final waits for the slot
    await clock.advance(1.0 + LATENCY_MARGIN)
    await asyncio.gather(*finishing)
    assert sorted(m.text for m in slack.replies("C1")) == ["First, whole", "Second, whole"]
    assert len(slack.calls_to("chat.postMessage")) == 2
    assert slack.throttled == {}


async def test_replies_refused_a_stream_at_once_take_turns_at_the_channels_post_slot(
    slack: SlackAPI,
) -> None:
    """Two replies in one channel start their streams together and the workspace refuses both: the post
    each falls back to was not reserved, so one takes the channel's slot and posts, and the other leaves
    its post to its next render, which waits for the slot."""
    slack.fail["chat.startStream"] = "not_allowed_token_type"
    clock = FakeClock()
    pacer = Pacer(clock)
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    renderers, refused = [], set[str]()
    for thread in ("1.1", "2.1"):
        reply = SlackSurface(
            client, channel="C1", thread_ts=thread, team_id="T1", user_id="U1", clock=clock,
            streamless_teams=refused, room=pacer.has_room, take=pacer.take,
        )  # fmt: skip
        renderers.append(pacer.renderer(reply))
    for renderer in renderers:
        renderer.update("Hello")
    await until(lambda: all(renderer.renders == 1 for renderer in renderers), "both first renders")
    assert len(slack.calls_to("chat.startStream")) == 2
    assert len(slack.calls_to("chat.postMessage")) == 1
    for renderer in renderers:  # whichever was answered first posted; the other waits for the slot
        renderer.update("Hello there")
    await until(lambda: clock.sleepers == 2, "both replies waiting for their next render")
    assert len(slack.calls_to("chat.postMessage")) == 1
    await clock.advance(1.0 + LATENCY_MARGIN)
    await until(lambda: len(slack.replies("C1")) == 2, "the second reply's post")
    for renderer, text in zip(renderers, ("Hello, all", "Hello there, all"), strict=True):
        await renderer.finish(text)
    assert sorted(m.text for m in slack.replies("C1")) == ["Hello there, all", "Hello, all"]
    assert slack.throttled == {}
