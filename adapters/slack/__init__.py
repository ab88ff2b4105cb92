"""Parley on Slack: a Bolt AsyncApp over Socket Mode (SLACK_APP_TOKEN) or HTTP at /slack/events on PORT."""

from __future__ import annotations

from adapters.slack.platform import SlackPlatform
from bot.config import Settings
from bot.engine import Engine

__all__ = ["SlackPlatform", "platform"]


def platform(engine: Engine, settings: Settings) -> SlackPlatform:
    return SlackPlatform(engine, settings)
