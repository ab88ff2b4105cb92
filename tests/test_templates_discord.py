"""/prompt on Discord through the real discord.py client: runs, forms (modals) for missing values and
their submissions, template names in autocomplete, and the loopback Discord refusing what Discord does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from bot.config import Settings
from bot.engine import Engine
from skills import builtin
from tests.support.discord_emulator import BOB, GENERAL, DiscordEmulator, running, until
from tests.support.llm_server import LLMServer

HAIKU = "Write a haiku about {{ topic }} in {{ mood }} for {{ user }} in {{ channel }}."


def prompt(name: str, details: str | None = None) -> list[dict[str, Any]]:
    options = [{"name": "name", "type": 3, "value": name}]
    return options + ([{"name": "details", "type": 3, "value": details}] if details else [])


def callbacks(discord_api: DiscordEmulator, interaction: str) -> list[dict[str, Any]]:
    return [c.json for c in discord_api.interaction_responses(interaction) if c.path.endswith("/callback")]


def answered(discord_api: DiscordEmulator, interaction: str) -> str | None:
    edits = [
        c.json.get("content")
        for c in discord_api.interaction_responses(interaction)
        if c.method == "PATCH" and "@original" in c.path
    ]
    return edits[-1] if edits else None


async def save(discord_api: DiscordEmulator, text: str, name: str = "haiku") -> str:
    saved = await discord_api.interact("prompt", prompt("save", f"{name} {text}"))
    await until(lambda: callbacks(discord_api, saved))
    return str(callbacks(discord_api, saved)[0]["data"]["content"])


async def test_a_run_with_every_value_is_answered_like_ask(
    discord_bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    assert await save(discord_api, HAIKU) == (
        "Saved the template haiku. It asks for topic, mood. Run it with /prompt haiku."
    )
    asked = await discord_api.interact("prompt", prompt("haiku", 'topic=rain mood="a calm mood"'))
    expected = "echo: Alice: Write a haiku about rain in a calm mood for Alice in general."
    await until(lambda: answered(discord_api, asked) == expected)
    assert callbacks(discord_api, asked)[0]["type"] == 5  # deferred within the 3 seconds, like /ask
    # Stored first, as the question it asked: memory holds the filled-in text.
    turns = await discord_bot.store.history(f"discord:{GENERAL}", 10)
    assert [t.content for t in turns if t.role == "user"] == [
        "Write a haiku about rain in a calm mood for Alice in general."
    ]


async def test_missing_values_are_asked_for_in_a_modal_and_its_submission_runs_it(
    discord_bot: Engine, discord_api: DiscordEmulator, llm: LLMServer
) -> None:
    await save(discord_api, HAIKU)
    asked = await discord_api.interact("prompt", prompt("haiku", "topic=snow"))
    await until(lambda: callbacks(discord_api, asked))
    shown = callbacks(discord_api, asked)[0]
    assert shown["type"] == 9
    fields = [row["components"][0] for row in shown["data"]["components"]]
    assert shown["data"]["title"] == "Fill in haiku"
    assert [(f["custom_id"], f["label"], f.get("value")) for f in fields] == [
        ("topic", "topic", "snow"),  # what was given is filled in already
        ("mood", "mood", None),
    ]
    submitted = await discord_api.submit_modal(asked, {"mood": "joy"}, user=BOB)
    expected = "echo: Bob: Write a haiku about snow in joy for Bob in general."
    await until(lambda: answered(discord_api, submitted) == expected)
    assert callbacks(discord_api, submitted)[0]["type"] == 5
    assert not llm.chat_requests()[1:]  # the form itself asked nothing of the model


async def test_a_submission_after_a_restart_still_runs_and_one_for_a_deleted_template_says_so(
    discord_api: DiscordEmulator, discord_settings: Settings, llm: LLMServer
) -> None:
    engine = await Engine.create(discord_settings, skills=builtin(discord_settings))
    async with running(discord_api, engine):
        await save(discord_api, "Tell me about {{ topic }}.")
        first = await discord_api.interact("prompt", prompt("haiku"))
        await until(lambda: callbacks(discord_api, first))
        second = await discord_api.interact("prompt", prompt("haiku"))
        await until(lambda: callbacks(discord_api, second))
    await engine.aclose()
    engine = await Engine.create(discord_settings, skills=builtin(discord_settings))
    async with running(discord_api, engine):
        submitted = await discord_api.submit_modal(first, {"topic": "tides"})
        await until(lambda: answered(discord_api, submitted) == "echo: Alice: Tell me about tides.")
        deleted = await discord_api.interact("prompt", prompt("delete", "haiku"))
        await until(lambda: callbacks(discord_api, deleted))
        late = await discord_api.submit_modal(second, {"topic": "tides"})
        await until(lambda: callbacks(discord_api, late))
    await engine.aclose()
    refusal = callbacks(discord_api, late)[0]
    assert refusal["type"] == 4 and refusal["data"]["flags"] == 64
    assert refusal["data"]["content"] == "There is no template named haiku here; /prompt list shows them."


async def test_autocomplete_lists_the_templates_here_then_the_verbs(
    discord_bot: Engine, discord_api: DiscordEmulator
) -> None:
    for name in ("standup", "summary", "haiku"):
        await save(discord_api, "Hello {{ user }}.", name)
    typed = [{"name": "name", "type": 3, "value": "s", "focused": True}]
    asked = await discord_api.interact("prompt", typed, autocomplete=True)
    await until(lambda: callbacks(discord_api, asked))
    answer = callbacks(discord_api, asked)[0]
    assert answer["type"] == 8
    assert [c["value"] for c in answer["data"]["choices"]] == ["standup", "summary", "save", "show"]


async def test_more_than_25_templates_autocomplete_to_25(
    discord_bot: Engine, discord_api: DiscordEmulator
) -> None:
    for number in range(30):
        await save(discord_api, "Hello.", f"t{number:02}")
    typed = [{"name": "name", "type": 3, "value": "", "focused": True}]
    asked = await discord_api.interact("prompt", typed, autocomplete=True)
    await until(lambda: callbacks(discord_api, asked))
    assert len(callbacks(discord_api, asked)[0]["data"]["choices"]) == 25


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m.update(title="x" * 46), "title"),
        (lambda m: m.update(custom_id="x" * 101), "custom_id"),
        (lambda m: m.update(components=[]), "components"),
        (lambda m: m.update(components=m["components"] * 6), "components"),
        (lambda m: m["components"][0]["components"].append(dict(m["components"][0]["components"][0])), "0"),
        (lambda m: m["components"][0]["components"][0].update(label="x" * 46), "label"),
        (lambda m: m["components"][0]["components"][0].update(value="x" * 4001), "value"),
        (lambda m: m["components"][0]["components"][0].update(style=3), "style"),
    ],
)
async def test_the_loopback_discord_refuses_modals_discord_refuses(
    discord_api: DiscordEmulator, change: Callable[[dict[str, Any]], None], field: str
) -> None:
    modal: dict[str, Any] = {
        "custom_id": "form",
        "title": "A form",
        "components": [{"type": 1, "components": [{"type": 4, "custom_id": "a", "label": "A", "style": 1}]}],
    }
    async with aiohttp.ClientSession() as http:
        assert await callback(http, discord_api, {"type": 9, "data": modal}) == 200
        change(modal)
        answer = await callback(http, discord_api, {"type": 9, "data": modal}, answer=True)
    assert answer["code"] == 50035
    assert field in str(answer["errors"])


async def test_the_loopback_discord_refuses_a_modal_in_answer_to_a_modal_or_an_autocomplete(
    discord_api: DiscordEmulator,
) -> None:
    modal = {
        "custom_id": "form",
        "title": "A form",
        "components": [{"type": 1, "components": [{"type": 4, "custom_id": "a", "label": "A", "style": 1}]}],
    }
    async with aiohttp.ClientSession() as http:
        first = await discord_api.interact("prompt", prompt("x"))
        await post_callback(http, discord_api, first, {"type": 9, "data": modal})
        submitted = await discord_api.submit_modal(first, {"a": "filled"})
        again = await post_callback(http, discord_api, submitted, {"type": 9, "data": modal})
        typing = await discord_api.interact("prompt", prompt("x"), autocomplete=True)
        completion = await post_callback(http, discord_api, typing, {"type": 9, "data": modal})
    assert again["errors"]["type"]["_errors"][0]["code"] == "INTERACTION_CALLBACK_TYPE_INVALID"
    assert completion["errors"]["type"]["_errors"][0]["code"] == "INTERACTION_CALLBACK_TYPE_INVALID"


async def post_callback(
    http: aiohttp.ClientSession, discord_api: DiscordEmulator, interaction: str, body: dict[str, Any]
) -> dict[str, Any]:
    url = f"{discord_api.api_base}/interactions/{interaction}/token-{interaction}/callback"
    async with http.post(url, json=body) as response:
        return dict(await response.json())


async def callback(
    http: aiohttp.ClientSession, discord_api: DiscordEmulator, body: dict[str, Any], *, answer: bool = False
) -> Any:
    """Answer a fresh slash command's interaction with `body`: the status, or with `answer` the body."""
    interaction = await discord_api.interact("prompt", prompt("x"))
    url = f"{discord_api.api_base}/interactions/{interaction}/token-{interaction}/callback"
    async with http.post(url, json=body) as response:
        return await response.json() if answer else response.status


async def test_an_unknown_template_or_a_bad_value_is_one_private_sentence(
    discord_bot: Engine, discord_api: DiscordEmulator
) -> None:
    await save(discord_api, "On {{ topic }}.")
    unknown = await discord_api.interact("prompt", prompt("nothing"))
    unquoted = await discord_api.interact("prompt", prompt("haiku", 'topic="tides'))
    extra = await discord_api.interact("prompt", prompt("haiku", "topic=a colour=red"))
    await until(lambda: all(callbacks(discord_api, i) for i in (unknown, unquoted, extra)))
    answers = [callbacks(discord_api, i)[0] for i in (unknown, unquoted, extra)]
    assert [(a["type"], a["data"]["flags"]) for a in answers] == [(4, 64)] * 3
    assert [a["data"]["content"] for a in answers] == [
        "There is no template named nothing here; /prompt list shows them.",
        'Quote a value with spaces in it, and close the quote: topic="a b".',
        "haiku has no variable 'colour'; its variables are: topic.",
    ]


def persona(action: str, name: str, **more: object) -> list[dict[str, Any]]:
    named = {"name": "name", "type": 3, "value": name, **more}
    return [{"name": "action", "type": 3, "value": action}, named]


async def test_persona_names_autocomplete_from_those_saved_here(
    discord_bot: Engine, discord_api: DiscordEmulator
) -> None:
    for name in ("pirate", "poet", "critic"):
        saved = await discord_api.interact("persona", persona("save", name))
        await until(lambda saved=saved: callbacks(discord_api, saved))
    asked = await discord_api.interact("persona", persona("use", "P", focused=True), autocomplete=True)
    await until(lambda: callbacks(discord_api, asked))
    answer = callbacks(discord_api, asked)[0]
    assert answer["type"] == 8
    assert [c["value"] for c in answer["data"]["choices"]] == ["pirate", "poet"]
