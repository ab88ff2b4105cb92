"""A reply's controls on Discord: Stop while it streams, Regenerate and another model's menu once it ends,
answered within Discord's 3 seconds, refused privately to others, and working after a restart. The real
discord.py client against the loopback Discord, which checks every component it is sent."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.config import Settings
from bot.controls import REFUSED
from bot.engine import Engine
from skills import builtin
from tests.support.discord_emulator import (
    ALICE,
    BOB,
    BOT_ID,
    EPHEMERAL,
    GENERAL,
    DiscordEmulator,
    running,
    until,
)
from tests.support.llm_server import LLMServer, Script

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}
OTHER_MODEL = "openrouter/openai/gpt-4o-mini"


def custom_ids(message: dict[str, Any]) -> list[str]:
    return [item["custom_id"] for row in message["components"] for item in row["components"]]


def answer_to(discord_api: DiscordEmulator, message_id: str) -> dict[str, Any] | None:
    replies = discord_api.replies_to(message_id)
    return replies[0] if replies else None


def callbacks(discord_api: DiscordEmulator, interaction_id: str) -> list[Any]:
    return [c for c in discord_api.interaction_responses(interaction_id) if c.path.endswith("/callback")]


async def test_stop_ends_the_reply_at_once_and_others_are_refused_privately(
    discord_api: DiscordEmulator, discord_engine: Engine, llm: LLMServer
) -> None:
    gate = asyncio.Semaphore(1)
    llm.enqueue(Script(tokens=["Once upon", " a time"], gate=gate))
    async with running(discord_api, discord_engine):
        asked = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> a story", mentions=[MENTION])
        await until(lambda: answer_to(discord_api, asked) is not None)
        reply = answer_to(discord_api, asked)
        assert reply is not None and reply["content"] == "Once upon"
        (stop,) = custom_ids(reply)
        assert stop.startswith("parley:stop:")

        refused = await discord_api.click(reply["id"], stop, user=BOB)
        await until(lambda: discord_api.original_response(refused) is not None)
        private = discord_api.original_response(refused)
        assert private is not None and private["content"] == REFUSED and private["flags"] & EPHEMERAL
        assert not llm.closed_by_client

        clicked = await discord_api.click(reply["id"], stop)
        await until(lambda: reply["content"] == "Once upon\n\n_Stopped._")
        assert [c.json["type"] for c in callbacks(discord_api, clicked)] == [6]  # acknowledged, no message
        await until(lambda: bool(llm.closed_by_client))
        # Once stopped, the reply offers Regenerate and the other models instead.
        await until(lambda: custom_ids(reply)[0].startswith("parley:regen:"))
        assert custom_ids(reply)[1].startswith("parley:regen-with:")
    turns, _ = await discord_engine.store.recall(f"discord:{GENERAL}", 10_000)
    assert [(t.role, t.content, t.outcome) for t in turns][-1] == ("assistant", "Once upon", "cut_off")


async def test_regenerate_with_another_model_from_the_menu_after_a_restart(
    discord_api: DiscordEmulator, discord_engine: Engine, discord_settings: Settings, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["Paris."]))
    async with running(discord_api, discord_engine):
        asked = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> capital of France?", mentions=[MENTION])
        await until(lambda: (answer_to(discord_api, asked) or {}).get("content") == "Paris.")
        first = answer_to(discord_api, asked)
        assert first is not None
        await until(lambda: len(custom_ids(first)) == 2)
    restarted = await Engine.create(discord_settings, skills=builtin(discord_settings))
    llm.enqueue(Script(tokens=["It is Paris."]))
    try:
        async with running(discord_api, restarted):
            menu = first["components"][1]["components"][0]
            assert OTHER_MODEL in [option["value"] for option in menu["options"]]
            refused = await discord_api.click(first["id"], menu["custom_id"], user=BOB, values=[OTHER_MODEL])
            await until(lambda: discord_api.original_response(refused) is not None)
            assert (discord_api.original_response(refused) or {}).get("content") == REFUSED
            await discord_api.click(first["id"], menu["custom_id"], values=[OTHER_MODEL])
            await until(lambda: (answer_to(discord_api, first["id"]) or {}).get("content") == "It is Paris.")
    finally:
        await restarted.aclose()
    assert llm.chat_requests()[-1].json["model"] == "openai/gpt-4o-mini"
    assert first["content"] == "Paris."  # the first answer stays where it was, as an alternative
    assert len(llm.chat_requests()) == 2  # Bob's refused click asked nothing


async def test_a_click_delivered_twice_regenerates_once(
    discord_api: DiscordEmulator, discord_engine: Engine, llm: LLMServer
) -> None:
    async with running(discord_api, discord_engine):
        asked = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> hello", mentions=[MENTION])
        await until(lambda: len(custom_ids(answer_to(discord_api, asked) or {"components": []})) == 2)
        first = answer_to(discord_api, asked)
        assert first is not None
        regenerate = custom_ids(first)[0]
        clicked = await discord_api.click(first["id"], regenerate)
        await until(lambda: answer_to(discord_api, first["id"]) is not None)
        await discord_api.deliver_again(clicked)
        await until(
            lambda: (answer_to(discord_api, first["id"]) or {}).get("content") == "echo: Alice: hello"
        )
        assert len(discord_api.replies_to(first["id"])) == 1 and len(llm.chat_requests()) == 2


async def test_the_regenerate_and_stop_slash_commands(
    discord_api: DiscordEmulator, discord_engine: Engine, llm: LLMServer
) -> None:
    async with running(discord_api, discord_engine):
        asked = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> hello", mentions=[MENTION])
        await until(lambda: answer_to(discord_api, asked) is not None)
        again = await discord_api.interact("regenerate", [{"name": "model", "type": 3, "value": OTHER_MODEL}])
        await until(
            lambda: (discord_api.original_response(again) or {}).get("content") == "echo: Alice: hello"
        )
        assert llm.chat_requests()[-1].json["model"] == "openai/gpt-4o-mini"
        stopped = await discord_api.interact("stop", [], user=ALICE)
        await until(lambda: discord_api.original_response(stopped) is not None)
        assert (discord_api.original_response(stopped) or {}).get("content") == (
            "Nothing you asked is being answered here right now."
        )


async def test_editing_the_question_regenerates_the_answer_in_place_and_deleting_it_forgets_it(
    discord_api: DiscordEmulator, discord_engine: Engine, llm: LLMServer
) -> None:
    async with running(discord_api, discord_engine):
        asked = await discord_api.send_message(GENERAL, f"<@{BOT_ID}> two plus two?", mentions=[MENTION])
        await until(
            lambda: (answer_to(discord_api, asked) or {}).get("content") == "echo: Alice: two plus two?"
        )
        shown = answer_to(discord_api, asked)
        assert shown is not None
        await discord_api.edit_message(asked, f"<@{BOT_ID}> three plus three?")
        await until(lambda: shown["content"] == "echo: Alice: three plus three?")
        assert len(discord_api.replies_to(asked)) == 1  # the same message, rewritten
        await until(
            lambda: custom_ids(shown)[:1] == [custom_ids(shown)[0]] and "regen:" in custom_ids(shown)[0]
        )
        key = f"discord:{GENERAL}"
        # Memory keeps the new question and, once the new answer is saved, only that answer.
        await until_remembered(discord_engine, key, ["three plus three?", "echo: Alice: three plus three?"])
        await discord_api.delete_message(GENERAL, asked)
        await until_remembered(discord_engine, key, [])


async def until_remembered(engine: Engine, key: str, contents: list[str]) -> None:
    """Wait for memory to hold exactly `contents` (it is written after the reply shows)."""
    async with asyncio.timeout(10):
        while [t.content for t in (await engine.store.recall(key, 10_000))[0]] != contents:
            await asyncio.sleep(0.02)
