"""The skills Parley ships with; the composition root registers them with the engine."""

from __future__ import annotations

from bot.config import Settings
from bot.skills import Skill
from skills.channel_history import ChannelHistory
from skills.read_page import ReadPage
from skills.web_search import WebSearch


def builtin(settings: Settings) -> list[Skill]:
    return [WebSearch(settings), ReadPage(settings), ChannelHistory()]
