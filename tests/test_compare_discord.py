"""/compare and /arena on Discord: two answers streamed at once into two messages, a ballot whose buttons
work after a restart, a private reveal per vote; the real discord.py client against the loopback Discord,
which refuses components Discord would refuse."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.compare import BALLOT
from bot.config import Settings
from bot.engine import Engine
from skills import builtin
from tests.support.discord_emulator import (
    BOB,
    EPHEMERAL,
    GENERAL,
    DiscordEmulator,
    running,
    until,
)
from tests.support.llm_server import LLMServer, Script

MINI, MIMO = "openrouter/openai/gpt-4o-mini", "openrouter/xiaomi/mimo-v2-flash"


async def new_engine(discord_settings: Settings) -> Engine:
    return await Engine.create(discord_settings, skills=builtin(discord_settings))


def options(**values: str) -> list[dict[str, Any]]:
    return [{"name": name, "type": 3, "value": value} for name, value in values.items()]


def ballot_of(discord_api: DiscordEmulator) -> dict[str, Any] | None:
    return next((m for m in discord_api.messages_in(GENERAL) if m["content"] == BALLOT), None)


def answer_text(discord_api: DiscordEmulator, interaction: str) -> str:
    """Everything a command's interaction was answered with (its callback, or the deferred response)."""
    return " ".join(str(c.json) for c in discord_api.interaction_responses(interaction))


def told(discord_api: DiscordEmulator, interaction: str) -> str:
    response = discord_api.original_response(interaction)
    if response is None:
        return ""
    assert response["flags"] & EPHEMERAL, "a vote's answer is only for the voter"
    return str(response["content"])


async def test_compare_streams_both_blind_and_votes_work_after_a_restart(
    discord_api: DiscordEmulator, discord_settings: Settings, llm: LLMServer
) -> None:
    gates = {"openai/gpt-4o-mini": asyncio.Semaphore(0), "xiaomi/mimo-v2-flash": asyncio.Semaphore(0)}
    llm.by_model["openai/gpt-4o-mini"] = Script(tokens=["Four", " (mini)."], gate=gates["openai/gpt-4o-mini"])
    llm.by_model["xiaomi/mimo-v2-flash"] = Script(
        tokens=["4", " (mimo)."], gate=gates["xiaomi/mimo-v2-flash"]
    )
    engine = await new_engine(discord_settings)
    try:
        async with running(discord_api, engine):
            asked = await discord_api.interact("compare", options(model_a=MINI, model_b=MIMO, prompt="2+2?"))
            await until(lambda: len(llm.chat_requests()) == 2)  # both sides asked before either answered
            for gate in gates.values():
                gate.release()
            await until(lambda: len(discord_api.messages_in(GENERAL)) == 2)  # A and B each show a token
            for gate in gates.values():
                gate.release()
            await until(lambda: ballot_of(discord_api) is not None)
    finally:
        await engine.aclose()
    first, second, ballot = discord_api.messages_in(GENERAL)
    original = discord_api.original_response(asked)
    assert original is not None and original["id"] == first["id"]  # A answers in the command's response
    assert first["content"].startswith("**Answer A**\n\n") and second["content"].startswith(
        "**Answer B**\n\n"
    )
    answers = {first["content"].split("\n\n")[1], second["content"].split("\n\n")[1]}
    assert answers == {"Four (mini).", "4 (mimo)."}
    assert not any("gpt-4o" in m["content"] or "mimo-v2" in m["content"] for m in (first, second, ballot))
    (row,) = ballot["components"]
    assert [(b["label"], b["custom_id"]) for b in row["components"]] == [
        ("A is better", row["components"][0]["custom_id"]),
        ("B is better", row["components"][1]["custom_id"]),
        ("Tie", row["components"][2]["custom_id"]),
        ("Both are bad", row["components"][3]["custom_id"]),
    ]
    a_model = MINI if "(mini)" in first["content"] else MIMO
    b_model = MIMO if a_model == MINI else MINI
    custom = {b["label"]: b["custom_id"] for b in row["components"]}

    restarted = await new_engine(discord_settings)
    try:
        async with running(discord_api, restarted):
            voted = await discord_api.click(ballot["id"], custom["A is better"])
            await until(lambda: told(discord_api, voted).startswith("Thanks"))
            assert (
                told(discord_api, voted)
                == f"Thanks: you voted A is better. A was {a_model}, B was {b_model}."
            )
            again = await discord_api.click(ballot["id"], custom["B is better"])
            await until(lambda: told(discord_api, again).startswith("You already"))
            by_bob = await discord_api.click(ballot["id"], custom["Tie"], user=BOB)
            await until(lambda: told(discord_api, by_bob).startswith("Thanks: you voted a tie"))
            board = await discord_api.interact("arena", [])
            await until(lambda: "Arena of this server" in answer_text(discord_api, board))
    finally:
        await restarted.aclose()
    shown = answer_text(discord_api, board)
    assert "2 votes" in shown and f"{a_model} — " in shown and "1 won, 0 lost, 1 tied" in shown


async def test_a_failing_side_still_lets_the_other_answer_and_shows_no_ballot(
    discord_api: DiscordEmulator, discord_settings: Settings, llm: LLMServer
) -> None:
    llm.by_model["openai/gpt-4o-mini"] = Script(tokens=["Fine."])
    llm.by_model["xiaomi/mimo-v2-flash"] = Script(status=500)
    engine = await new_engine(discord_settings)
    try:
        async with running(discord_api, engine):
            await discord_api.interact("compare", options(model_a=MINI, model_b=MIMO, prompt="hi"))
            await until(
                lambda: (
                    [m["content"][-1:] for m in discord_api.messages_in(GENERAL)] in (["_", "."], [".", "_"])
                )
            )
            same = await discord_api.interact("compare", options(model_a=MINI, model_b="openai/gpt-4o-mini"))
            await until(lambda: "Pick two different models" in str(discord_api.original_response(same)))
    finally:
        await engine.aclose()
    assert ballot_of(discord_api) is None
