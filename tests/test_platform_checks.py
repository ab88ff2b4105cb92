"""`parley check`'s questions to Discord and Slack, against the loopback emulators, answer by answer."""

from __future__ import annotations

from typing import Any

from adapters.discord.check import check as check_discord
from adapters.slack.check import check as check_slack
from bot.config import Settings
from tests.support.discord_emulator import DiscordEmulator
from tests.support.slack_api import SlackAPI


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


async def test_discord_asks_for_the_bot_and_its_application_with_the_token() -> None:
    async with DiscordEmulator(token="tok") as discord_api:
        found = await check_discord(settings(discord_token="tok", discord_api_base=discord_api.api_base))
        calls = [(c.method, c.path) for c in discord_api.calls]
    assert found == [
        (True, "Discord: DISCORD_TOKEN accepted for parley (id 100000000000000900)"),
        (True, "Discord: the Message Content intent is on"),
    ]
    assert calls == [("GET", "/api/v10/users/@me"), ("GET", "/api/v10/applications/@me")]


async def test_discord_failures_are_one_finding() -> None:
    async with DiscordEmulator(token="tok") as discord_api:
        configured = settings(discord_token="tok", discord_api_base=discord_api.api_base)
        discord_api.fail_next("GET", "/applications/@me", 502)
        assert await check_discord(configured) == [
            (False, "Discord answered HTTP 502 to GET /api/v10/applications/@me")
        ]
        discord_api.fail_next("GET", "/users/@me", 429)
        assert await check_discord(configured) == [
            (False, "Discord answered HTTP 429 to GET /api/v10/users/@me")
        ]


async def test_slack_rate_limits_and_token_types_are_named() -> None:
    async with SlackAPI() as slack:
        socket_mode = settings(
            slack_bot_token=slack.bot_token, slack_app_token=slack.app_token, slack_api_url=slack.api_url
        )
        slack.rate_limit["apps.connections.open"] = 1
        assert await check_slack(socket_mode) == [
            (True, "Slack: SLACK_BOT_TOKEN accepted for parley in Loopback"),
            (False, "Slack rate-limited apps.connections.open; run the check again in 0 seconds"),
        ]
        swapped = settings(
            slack_bot_token=slack.app_token, slack_app_token=slack.bot_token, slack_api_url=slack.api_url
        )
        assert await check_slack(swapped) == [
            (
                False,
                "Slack refused SLACK_BOT_TOKEN (not_allowed_token_type); it must be the Bot User OAuth "
                "Token (xoxb-…)",
            )
        ]
        assert [c.headers["Authorization"] for c in slack.calls] == [
            f"Bearer {slack.bot_token}",
            f"Bearer {slack.app_token}",
            f"Bearer {slack.app_token}",
        ]


async def test_discord_with_shards_is_told_the_count_discord_recommends() -> None:
    async with DiscordEmulator(token="tok", shards=4) as discord_api:
        for count, found in [
            (4, (True, "Discord: DISCORD_SHARD_COUNT=4 (Discord recommends 4)")),
            (
                2,
                (
                    False,
                    "Discord: DISCORD_SHARD_COUNT=2 is fewer than the 4 shards Discord recommends for this "
                    "bot; set it to that, the same on every instance",
                ),
            ),
        ]:
            configured = settings(
                discord_token="tok", discord_api_base=discord_api.api_base, discord_shard_count=count
            )
            assert (await check_discord(configured))[-1] == found
    assert [c.path for c in discord_api.calls].count("/api/v10/gateway/bot") == 2
