"""Usage, budgets, access and the operator endpoints on Slack: the real Bolt app and the loopback Slack."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from bot.access import NOT_ALLOWED, NOT_HERE
from bot.config import Settings
from tests.support.llm_server import LLMServer
from tests.support.slack_api import TEAM, SlackAPI
from tests.support.slack_harness import ADMIN, ALICE, BOB, Harness, serving, until


def streamed(harness: Harness) -> list[str]:
    """The final text of every reply streamed, in order."""
    return [m.text for m in harness.slack.replies()]


async def test_usage_on_slack_is_ephemeral_and_knows_the_workspace(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    async with serving(slack, llm, slack_settings()) as harness:
        await harness.mention("hello", ts="1700000001.000100")
        await harness.mention("hi", ts="1700000002.000100", user=BOB.id)
        await until(lambda: answered(harness) == 2, "2 replies")
        await harness.command("usage", user=ALICE.id)
        await until(lambda: slack.responses, "the answer")
        mine = slack.responses[0]
        assert mine["response_type"] == "ephemeral"
        assert mine["text"].startswith("Your usage this month") and ": 1 reply, 15 tokens" in mine["text"]
        await harness.command("usage server today", user=BOB.id)
        await harness.command("usage server today", user=ADMIN.id)  # a workspace admin manages channels
        await until(lambda: len(slack.responses) == 3, "both answers")
        assert (
            slack.responses[1]["text"]
            == "Only channel managers and Parley admins can see this workspace's usage."
        )
        workspace = slack.responses[2]["text"]
        assert workspace.startswith("Usage in this workspace today (UTC): 2 replies, 30 tokens")
        (row,) = await harness.engine.store.usage_report("model", "server", 0)
        assert row["key"] == f"slack:{TEAM}"


async def test_a_channel_budget_used_up_is_the_reply_and_nothing_reaches_the_provider(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    async with serving(slack, llm, slack_settings(budgets={"channel_daily_tokens": 10})) as harness:
        await harness.mention("hello", ts="1700000001.000100")
        await harness.finished_streams(1)
        await until(lambda: answered(harness) == 1, "recorded")
        await harness.mention("again", ts="1700000002.000100", user=BOB.id)
        await harness.finished_streams(2)
        assert streamed(harness)[1].startswith(
            "This channel's daily budget of 10 tokens is used up (15 tokens"
        )
        assert len(llm.chat_requests()) == 1
        await harness.command("budget", user=BOB.id)
        await until(lambda: slack.responses, "the budgets")
        assert "This channel's daily: 15 tokens of 10 tokens used" in slack.responses[0]["text"]


async def test_a_denied_person_is_told_privately_and_nothing_is_stored_or_sent(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    settings = slack_settings(access={"deny_users": [ALICE.id], "deny_channels": ["C2"]})
    async with serving(slack, llm, settings) as harness:
        await harness.mention("hello", ts="1700000001.000100")
        await until(lambda: slack.ephemerals, "the refusal")
        assert slack.ephemerals[0]["user"] == ALICE.id and slack.ephemerals[0]["text"] == NOT_ALLOWED
        await harness.mention("in C2", channel="C2", ts="1700000002.000100", user=BOB.id)
        await until(lambda: len(slack.ephemerals) == 2, "the second refusal")
        assert (slack.ephemerals[1]["channel"], slack.ephemerals[1]["text"]) == ("C2", NOT_HERE)
        await harness.command("model", user=ALICE.id)
        await until(lambda: slack.responses, "the command's refusal")
        assert (slack.responses[0]["text"], slack.responses[0]["response_type"]) == (NOT_ALLOWED, "ephemeral")
        await harness.mention("hi", ts="1700000003.000100", user=BOB.id)  # the sentinel
        await harness.finished_streams(1)
        assert [r.json["messages"][-1]["content"] for r in llm.chat_requests()] == ["Bob: hi"]
        stored = await harness.engine.store.history("slack:C1:1700000001.000100", 10)
        assert stored == []


async def test_http_mode_serves_metrics_and_health_on_port_and_counts_slacks_429s(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    slack.rate_limit["chat.startStream"] = 1  # one 429, which the client waits out and retries
    async with serving(slack, llm, slack_settings()) as harness:
        base = f"http://127.0.0.1:{harness.platform.port}"
        async with harness.http.get(f"{base}/healthz") as response:
            assert response.status == 503  # nothing said the platform is up yet
            assert await response.json() == {"status": "unhealthy", "store": "up", "platforms": {}}
        harness.engine.health.up("slack")
        async with harness.http.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok", "store": "up", "platforms": {"slack": "up"}}
        await harness.mention("hello", ts="1700000001.000100")
        await harness.finished_streams(1)
        await until(lambda: answered(harness) == 1, "counted")
        async with harness.http.get(f"{base}/metrics") as response:
            assert response.status == 200 and response.content_type == "text/plain"
            families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("parley_platform_rate_limited_total", (("platform", "slack"),))] == 1
    assert samples[("parley_replies_total", (("outcome", "ok"), ("platform", "slack")))] == 1
    model = (("kind", "prompt"), ("model", "openrouter/xiaomi/mimo-v2-flash"))
    assert samples[("parley_tokens_total", model)] == 12
    assert samples[("parley_final_text_seconds_count", (("platform", "slack"),))] == 1
    assert samples[("parley_first_text_seconds_count", (("platform", "slack"),))] == 1
    assert samples[("parley_inbox_pending", ())] == 0
    assert samples[("parley_active_streams", ())] == 0


def answered(harness: Harness) -> float:
    """Replies finished and accounted for (their usage recorded)."""
    labels = {"platform": "slack", "outcome": "ok"}
    return harness.engine.metrics.registry.get_sample_value("parley_replies_total", labels) or 0


async def test_a_denied_person_talking_where_parley_only_reads_along_meets_silence(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    async with serving(slack, llm, slack_settings(access={"deny_users": [ALICE.id]})) as harness:
        await harness.command("autoreply on", user=ADMIN.id)
        await until(lambda: slack.responses, "autoreply on")
        plain = {"type": "message", "channel": "C1", "channel_type": "channel", "team": TEAM}
        await harness.post(harness.event({**plain, "user": ALICE.id, "text": "lunch?", "ts": "1700000001.1"}))
        await harness.post(harness.event({**plain, "user": BOB.id, "text": "sure", "ts": "1700000002.1"}))
        await harness.finished_streams(1)  # Bob's, answered after Alice's was read
        assert slack.ephemerals == []
        await harness.mention("and me?", ts="1700000003.1")
        await until(lambda: slack.ephemerals, "the refusal of a mention")
        assert [e["text"] for e in slack.ephemerals] == [NOT_ALLOWED]
        assert [r.json["messages"][-1]["content"] for r in llm.chat_requests()] == ["Bob: sure"]
