"""`/usage` for me, the channel and the server, in every period; the terminal's; `parley usage`."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.engine import Engine
from bot.models import Author, ConversationKey
from tests.support.asking import ADA, CHANNEL, ask, msg
from tests.support.cli import parley
from tests.support.llm_server import LLMServer, Script

BOB = Author("u-bob", "Bob")
BOSS = Author("u-boss", "Boss", is_channel_manager=True)
OTHER = ConversationKey("test", "random")
SERVER = "T1"
PRICES = {"openrouter": {"prices": {"xiaomi/mimo-v2-flash": {"prompt": 1.0, "completion": 2.0}}}}
# 12 prompt and 3 completion tokens a reply: 15 tokens, $0.000018.


@pytest.fixture
async def busy(make_engine: Callable[..., Any], llm: LLMServer) -> Engine:
    """Ada asked twice here and once in another channel, Bob once here; all in server T1."""
    engine = await make_engine(providers=PRICES)
    await ask(engine, "one", server_id=SERVER)
    await ask(engine, "two", server_id=SERVER)
    await ask(engine, "three", OTHER, server_id=SERVER)
    llm.enqueue(Script(tokens=["Hi Bob"], usage=(100, 20)))
    await ask(engine, "four", author=BOB, server_id=SERVER)
    return engine


async def usage(engine: Engine, line: str, author: Author = ADA, key: ConversationKey = CHANNEL) -> str:
    result = await engine.run_command(msg("/" + line, key, author, server_id=SERVER), line)
    assert result.ephemeral, "usage is only for whoever asked"
    return result.text


async def test_usage_shows_my_replies_by_model(busy: Engine) -> None:
    text = await usage(busy, "usage")
    assert text.startswith("Your usage this month (since ")
    assert ": 3 replies, 45 tokens, $0.0001." in text.splitlines()[0]
    assert "  openrouter/xiaomi/mimo-v2-flash: 3 replies, 45 tokens, $0.0001" in text
    assert "Top people" not in text


async def test_usage_of_a_channel_ranks_its_people(busy: Engine) -> None:
    text = await usage(busy, "usage channel")
    assert text.splitlines()[0].startswith("Usage in this channel this month")
    assert ": 3 replies, 150 tokens," in text.splitlines()[0]
    people = text.split("Top people:\n")[1].splitlines()
    assert people[0].startswith("  Bob: 1 reply, 120 tokens") and people[1].startswith("  Ada: 2 replies")


async def test_usage_of_the_server_is_for_managers(busy: Engine) -> None:
    assert (
        await usage(busy, "usage server")
        == "Only channel managers and Parley admins can see this server's usage."
    )
    text = await usage(busy, "usage server", BOSS)
    assert ": 4 replies, 165 tokens," in text.splitlines()[0]


async def test_usage_periods(busy: Engine) -> None:
    assert "today (UTC): 3 replies" in await usage(busy, "usage today")
    assert "this week (since Monday" in await usage(busy, "usage week")
    assert "since 01 Jan 2020 UTC: 3 replies" in await usage(busy, "usage me since 2020-01-01")
    assert await usage(busy, "usage since 2999-01-01") == "Your usage since 01 Jan 2999 UTC: nothing yet."
    assert await usage(busy, "usage since soon") == (
        "'soon' is not a date; write it as YYYY-MM-DD, like 2026-05-01."
    )
    assert (await usage(busy, "usage yesterday")).startswith("Usage: /usage [me|channel|server]")


async def test_usage_server_where_there_is_none(engine: Engine) -> None:
    result = await engine.run_command(msg("/usage server"), "usage server")
    assert result.text == "There is no server here; try /usage channel."


async def test_the_terminal_has_usage_too(llm: LLMServer, tmp_path: Path) -> None:
    code, out, err = await parley(llm, tmp_path, "chat", stdin="hello\n/usage\n")
    assert code == 0, err
    assert out.splitlines()[0].startswith("echo: ")
    assert ": 1 reply, 15 tokens, cost unknown." in out


async def test_parley_usage_for_operators_by_model_person_and_channel(
    busy: Engine, llm: LLMServer, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": busy.settings.database_url}
    code, out, err = await parley(llm, tmp_path, "usage", "--by", "person", "--csv", **env)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["person"], r["name"], r["replies"], r["prompt_tokens"]) for r in rows] == [
        ("test:u-bob", "Bob", "1", "100"),
        ("test:u-ada", "Ada", "3", "36"),
    ]
    assert float(rows[1]["cost_usd"]) == pytest.approx(3 * (12e-6 + 6e-6))
    code, out, err = await parley(llm, tmp_path, "usage", "--by", "channel", **env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["channel", "replies", "prompt_tokens", "completion_tokens", "cost_usd"]
    assert lines[1].split()[:2] == ["test:general", "3"] and lines[2].split()[:2] == ["test:random", "1"]
    code, out, err = await parley(llm, tmp_path, "usage", "--since", "2999-01-01", **env)
    assert (code, out) == (0, "No usage recorded in that period.\n")
    code, out, err = await parley(llm, tmp_path, "usage", "--since", "May", **env)
    assert code == 2 and err == "error: 'May' is not a date; write it as YYYY-MM-DD, like 2026-05-01.\n"
