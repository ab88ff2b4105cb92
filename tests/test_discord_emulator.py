"""The loopback Discord refuses what Discord refuses, or the Discord tests would prove nothing.

Requests go over plain HTTP, as a client that does not check anything itself would send them.
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from discord.utils import snowflake_time

from tests.support.discord_emulator import (
    APP_ID,
    BOT_ID,
    DM_CHANNEL,
    GENERAL,
    RANDOM,
    THREAD,
    DiscordEmulator,
    overwrite,
)

VIEW_CHANNEL = 1 << 10
READ_MESSAGE_HISTORY = 1 << 16

OPTION = {"type": 3, "name": "text", "description": "Some text"}
COMMAND = {"name": "ask", "description": "Ask something", "type": 1, "options": [OPTION]}


async def call(
    discord_api: DiscordEmulator, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    url = discord_api.api_base + path
    async with aiohttp.ClientSession() as session, session.request(method, url, json=body) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else {}, dict(response.headers)


def code(answer: tuple[int, dict[str, Any], dict[str, str]]) -> tuple[int, int | None]:
    return answer[0], answer[1].get("code")


async def test_messages_over_2000_characters_or_empty_are_refused(discord_api: DiscordEmulator) -> None:
    messages = f"/channels/{GENERAL}/messages"
    assert code(await call(discord_api, "POST", messages, {"content": "x" * 2001})) == (400, 50035)
    assert code(await call(discord_api, "POST", messages, {"content": ""})) == (400, 50006)
    status, sent, _ = await call(discord_api, "POST", messages, {"content": "x" * 2000})
    assert status == 200
    edit = f"{messages}/{sent['id']}"
    assert code(await call(discord_api, "PATCH", edit, {"content": "y" * 2001})) == (400, 50035)
    assert code(await call(discord_api, "PATCH", edit, {"content": ""})) == (400, 50006)
    assert code(await call(discord_api, "PATCH", f"{messages}/123", {"content": "z"})) == (404, 10008)
    assert code(await call(discord_api, "POST", "/channels/42/messages", {"content": "z"})) == (404, 10003)


async def test_only_the_bots_own_messages_can_be_edited_and_replies_need_their_message(
    discord_api: DiscordEmulator,
) -> None:
    theirs = await discord_api.send_message(GENERAL, "hello")
    messages = f"/channels/{GENERAL}/messages"
    reply = {"content": "hi", "message_reference": {"message_id": theirs}}
    assert (await call(discord_api, "POST", messages, reply))[0] == 200
    gone = {"content": "hi", "message_reference": {"message_id": "999"}}
    assert code(await call(discord_api, "POST", messages, gone)) == (400, 50035)
    tolerant = {"content": "hi", "message_reference": {"message_id": "999", "fail_if_not_exists": False}}
    assert (await call(discord_api, "POST", messages, tolerant))[0] == 200


async def test_command_registrations_are_validated(discord_api: DiscordEmulator) -> None:
    path = f"/applications/{APP_ID}/commands"
    assert (await call(discord_api, "PUT", path, [COMMAND]))[0] == 200
    refused = [
        {**COMMAND, "name": "Ask"},
        {**COMMAND, "name": "a" * 33},
        {**COMMAND, "description": ""},
        {**COMMAND, "description": "d" * 101},
        {**COMMAND, "options": [{**OPTION, "name": f"o{i}"} for i in range(26)]},
        {**COMMAND, "options": [{**OPTION, "description": "…" * 101}]},
        {**COMMAND, "options": [{**OPTION, "name": "a"}, {**OPTION, "name": "b", "required": True}]},
        {**COMMAND, "options": [OPTION, OPTION]},
        {
            **COMMAND,
            "options": [{**OPTION, "choices": [{"name": str(i), "value": str(i)} for i in range(26)]}],
        },
        {**COMMAND, "options": [{**OPTION, "choices": [{"name": "n", "value": "v" * 101}]}]},
        {**COMMAND, "options": [{**OPTION, "choices": [{"name": "", "value": "v"}]}]},
        {**COMMAND, "options": [{**OPTION, "autocomplete": True, "choices": [{"name": "n", "value": "v"}]}]},
    ]
    for command in refused:
        assert code(await call(discord_api, "PUT", path, [command])) == (400, 50035), command
    assert code(await call(discord_api, "PUT", path, [COMMAND, COMMAND])) == (400, 50035)


async def test_an_interaction_is_answered_once_within_3_seconds(discord_api: DiscordEmulator) -> None:
    first = await discord_api.interact("ask", [])
    callback = f"/interactions/{first}/token-{first}/callback"
    assert (await call(discord_api, "POST", callback, {"type": 5}))[0] == 200
    assert code(await call(discord_api, "POST", callback, {"type": 4, "data": {"content": "x"}})) == (
        400,
        40060,
    )
    discord_api.initial_response_seconds = 0.0  # every answer from now on is late
    late = await discord_api.interact("ask", [])
    late_callback = f"/interactions/{late}/token-{late}/callback"
    assert code(await call(discord_api, "POST", late_callback, {"type": 5})) == (404, 10062)
    # Its token was never acknowledged, so it cannot be used for edits or follow-ups either.
    edit = f"/webhooks/{APP_ID}/token-{late}/messages/@original"
    assert code(await call(discord_api, "PATCH", edit, {"content": "x"})) == (404, 10015)


async def test_interaction_messages_are_checked_like_any_other(discord_api: DiscordEmulator) -> None:
    asked = await discord_api.interact("ask", [])
    callback = f"/interactions/{asked}/token-{asked}/callback"
    too_long = {"type": 4, "data": {"content": "x" * 2001}}
    assert code(await call(discord_api, "POST", callback, too_long)) == (400, 50035)
    assert (await call(discord_api, "POST", callback, {"type": 5}))[0] == 200
    webhook = f"/webhooks/{APP_ID}/token-{asked}"
    assert code(await call(discord_api, "PATCH", f"{webhook}/messages/@original", {"content": ""})) == (
        400,
        50006,
    )
    status, original, _ = await call(discord_api, "PATCH", f"{webhook}/messages/@original", {"content": "a"})
    assert status == 200 and original["content"] == "a"
    assert code(await call(discord_api, "POST", webhook, {"content": "x" * 2001})) == (400, 50035)
    status, followup, _ = await call(discord_api, "POST", webhook, {"content": "b"})
    assert status == 200 and followup["id"] != original["id"]
    edit = f"{webhook}/messages/{followup['id']}"
    assert code(await call(discord_api, "PATCH", edit, {"content": "y" * 2001})) == (400, 50035)


async def test_the_first_follow_up_after_a_deferral_edits_the_loading_message(
    discord_api: DiscordEmulator,
) -> None:
    asked = await discord_api.interact("ask", [])
    await call(discord_api, "POST", f"/interactions/{asked}/token-{asked}/callback", {"type": 5})
    webhook = f"/webhooks/{APP_ID}/token-{asked}"
    status, first, _ = await call(discord_api, "POST", webhook, {"content": "one", "flags": 64})
    assert status == 200 and discord_api.original_response(asked) == first and first["flags"] == 0
    status, second, _ = await call(discord_api, "POST", webhook, {"content": "two"})
    assert status == 200 and second["id"] != first["id"]


async def test_autocomplete_answers_are_validated(discord_api: DiscordEmulator) -> None:
    async def answer(choices: list[dict[str, str]]) -> tuple[int, int | None]:
        asked = await discord_api.interact("model", [], autocomplete=True)
        body = {"type": 8, "data": {"choices": choices}}
        return code(await call(discord_api, "POST", f"/interactions/{asked}/token-{asked}/callback", body))

    assert await answer([{"name": "n", "value": "v" * 100}]) == (200, None)
    assert await answer([{"name": "n", "value": "v" * 101}]) == (400, 50035)
    assert await answer([{"name": "n" * 101, "value": "v"}]) == (400, 50035)
    assert await answer([{"name": str(i), "value": str(i)} for i in range(26)]) == (400, 50035)
    asked = await discord_api.interact("model", [], autocomplete=True)
    not_a_choice = {"type": 4, "data": {"content": "x"}}
    assert code(
        await call(discord_api, "POST", f"/interactions/{asked}/token-{asked}/callback", not_a_choice)
    ) == (
        400,
        50035,
    )


async def test_once_synced_only_those_commands_and_their_autocomplete_options_are_sent(
    discord_api: DiscordEmulator,
) -> None:
    picked = {**OPTION, "name": "model", "autocomplete": True}
    commands = [COMMAND, {**COMMAND, "name": "model", "options": [picked]}]
    assert (await call(discord_api, "PUT", f"/applications/{APP_ID}/commands", commands))[0] == 200
    await discord_api.interact("model", [{**picked, "value": "gp", "focused": True}], autocomplete=True)
    with pytest.raises(AssertionError, match="no /nope was synced"):
        await discord_api.interact("nope", [])
    with pytest.raises(AssertionError, match="/ask text has no autocomplete"):
        await discord_api.interact("ask", [{**OPTION, "value": "x", "focused": True}], autocomplete=True)


async def test_an_interaction_token_expires(discord_api: DiscordEmulator) -> None:
    asked = await discord_api.interact("ask", [])
    await call(discord_api, "POST", f"/interactions/{asked}/token-{asked}/callback", {"type": 5})
    discord_api.token_seconds = 0.0
    edit = f"/webhooks/{APP_ID}/token-{asked}/messages/@original"
    assert code(await call(discord_api, "PATCH", edit, {"content": "late"})) == (401, 50027)


async def test_rate_limits_have_headers_and_a_bucket_per_route_and_resource(
    discord_api: DiscordEmulator,
) -> None:
    messages = f"/channels/{GENERAL}/messages"
    remaining = []
    for _ in range(5):
        status, sent, headers = await call(discord_api, "POST", messages, {"content": "x"})
        assert status == 200 and headers["X-RateLimit-Limit"] == "5" and headers["X-RateLimit-Bucket"]
        assert 0 < float(headers["X-RateLimit-Reset-After"]) <= 5.0
        remaining.append(headers["X-RateLimit-Remaining"])
    assert remaining == ["4", "3", "2", "1", "0"]
    status, body, headers = await call(discord_api, "POST", messages, {"content": "x"})
    assert status == 429 and headers["Via"] and int(headers["Retry-After"]) >= 1
    assert 0 < body["retry_after"] <= 5.0 and body["global"] is False
    assert discord_api.rate_limited == 1
    # Edits in that channel, and sends in another, have buckets of their own.
    assert (await call(discord_api, "PATCH", f"{messages}/{sent['id']}", {"content": "y"}))[0] == 200
    assert (await call(discord_api, "POST", f"/channels/{RANDOM}/messages", {"content": "x"}))[0] == 200


async def test_a_privileged_intent_the_application_lacks_closes_the_gateway_with_4014(
    discord_api: DiscordEmulator,
) -> None:
    discord_api.app_flags = 0
    async with aiohttp.ClientSession() as session, session.ws_connect(discord_api.gateway_url) as socket:
        assert (await socket.receive_json())["op"] == 10
        await socket.send_json({"op": 2, "d": {"token": "t", "intents": 1 << 15, "properties": {}}})
        closing = await socket.receive()
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4014
    assert discord_api.closed_with == [4014] and not discord_api.ready.is_set()  # no READY was sent


async def listing(discord_api: DiscordEmulator, channel: int, **query: str) -> tuple[int, Any]:
    url = f"{discord_api.api_base}/channels/{channel}/messages"
    async with aiohttp.ClientSession() as session, session.get(url, params=query) as response:
        return response.status, await response.json()


async def test_history_is_newest_first_a_page_at_a_time(discord_api: DiscordEmulator) -> None:
    ids = [await discord_api.send_message(GENERAL, f"m{n}") for n in range(120)]
    status, page = await listing(discord_api, GENERAL)
    assert status == 200 and [m["id"] for m in page] == ids[::-1][:50]  # 50 when no limit is given
    assert "guild_id" not in page[0] and "member" not in page[0]  # as REST gives messages
    assert [m["id"] for m in (await listing(discord_api, GENERAL, limit="100"))[1]] == ids[::-1][:100]
    before = (await listing(discord_api, GENERAL, limit="3", before=ids[10]))[1]
    assert [m["id"] for m in before] == [ids[9], ids[8], ids[7]]
    after = (await listing(discord_api, GENERAL, limit="3", after=ids[10]))[1]
    assert [m["id"] for m in after] == [ids[13], ids[12], ids[11]]  # the next ones, newest first
    around = (await listing(discord_api, GENERAL, limit="4", around=ids[10]))[1]
    assert [m["id"] for m in around] == [ids[12], ids[11], ids[10], ids[9]]
    sent = await call(discord_api, "POST", f"/channels/{GENERAL}/messages", {"content": "mine"})
    assert (await listing(discord_api, GENERAL, limit="1"))[1][0]["id"] == sent[1]["id"]
    await discord_api.send_message(THREAD, "in a thread")
    assert [m["content"] for m in (await listing(discord_api, THREAD))[1]] == ["in a thread"]
    # Ids grow with time, and a message's timestamp is the time its id holds.
    assert all(int(a) < int(b) for a, b in itertools.pairwise(ids))
    assert all(datetime.fromisoformat(m["timestamp"]) == snowflake_time(int(m["id"])) for m in page)


async def test_history_refuses_what_discord_refuses(discord_api: DiscordEmulator) -> None:
    for query in ({"limit": "0"}, {"limit": "101"}, {"limit": "ten"}, {"before": "x"}):
        status, body = await listing(discord_api, GENERAL, **query)
        assert (status, body["code"]) == (400, 50035), query
    status, body = await listing(discord_api, GENERAL, before="1", after="2")  # one of them at a time
    assert (status, body["code"]) == (400, 50035)
    assert (await listing(discord_api, GENERAL, sort="asc"))[0] == 400
    status, body = await listing(discord_api, 42)
    assert (status, body["code"]) == (404, 10003)


async def test_history_follows_the_bots_permissions_in_the_channel(discord_api: DiscordEmulator) -> None:
    await discord_api.send_message(RANDOM, "hello")
    await discord_api.send_message(DM_CHANNEL, "psst", guild=False)
    bot = str(BOT_ID)
    discord_api.overwrites[RANDOM] = [overwrite(bot, deny=READ_MESSAGE_HISTORY, member=True)]
    assert await listing(discord_api, RANDOM) == (200, [])  # documented: no messages, no error
    discord_api.overwrites[RANDOM] = [overwrite(bot, deny=VIEW_CHANNEL, member=True)]
    status, body = await listing(discord_api, RANDOM)
    assert (status, body["code"]) == (403, 50001)
    assert [m["content"] for m in (await listing(discord_api, DM_CHANNEL))[1]] == ["psst"]


async def test_the_bot_deletes_its_own_messages_only(discord_api: DiscordEmulator) -> None:
    theirs = await discord_api.send_message(GENERAL, "not yours")
    _, mine, _ = await call(discord_api, "POST", f"/channels/{GENERAL}/messages", {"content": "mine"})
    messages = f"/channels/{GENERAL}/messages"
    assert code(await call(discord_api, "DELETE", f"{messages}/{theirs}")) == (403, 50013)
    assert (await call(discord_api, "DELETE", f"{messages}/{mine['id']}"))[0] == 204
    assert code(await call(discord_api, "DELETE", f"{messages}/{mine['id']}")) == (404, 10008)
    assert code(await call(discord_api, "DELETE", f"/channels/{RANDOM}/messages/{theirs}")) == (404, 10008)


async def test_an_ephemeral_response_is_out_of_the_channel_endpoints_reach(
    discord_api: DiscordEmulator,
) -> None:
    asked = await discord_api.interact("help", [])
    callback = f"/interactions/{asked}/token-{asked}/callback"
    answer = {"type": 4, "data": {"content": "only you", "flags": 64}}
    _, sent, _ = await call(discord_api, "POST", callback, answer)
    message = sent["interaction"]["response_message_id"]
    edit = f"/channels/{GENERAL}/messages/{message}"
    assert code(await call(discord_api, "PATCH", edit, {"content": "everyone"})) == (404, 10008)
    public = await discord_api.interact("ask", [])
    await call(discord_api, "POST", f"/interactions/{public}/token-{public}/callback", {"type": 5})
    webhook = f"/webhooks/{APP_ID}/token-{public}/messages/@original"
    await call(discord_api, "PATCH", webhook, {"content": "for all"})
    original = discord_api.original_response(public)
    assert original is not None
    path = f"/channels/{GENERAL}/messages/{original['id']}"
    assert (await call(discord_api, "PATCH", path, {"content": "edited later"}))[0] == 200


def button(custom_id: str, label: str = "Go", style: int = 1) -> dict[str, Any]:
    return {"type": 2, "style": style, "label": label, "custom_id": custom_id}


def select(custom_id: str, options: int = 2, **more: Any) -> dict[str, Any]:
    listed = [{"label": f"option {n}", "value": f"v{n}"} for n in range(options)]
    return {"type": 3, "custom_id": custom_id, "options": listed, **more}


def row(*items: dict[str, Any]) -> dict[str, Any]:
    return {"type": 1, "components": list(items)}


async def test_message_components_are_checked_as_discord_checks_them(discord_api: DiscordEmulator) -> None:
    discord_api.limits.clear()  # many sends in a row; the rate limits are tested on their own
    messages = f"/channels/{GENERAL}/messages"
    refused = {
        "six rows": [row(button(f"b{n}")) for n in range(6)],
        "six buttons in a row": [row(*(button(f"b{n}") for n in range(6)))],
        "a select beside a button": [row(select("s"), button("b"))],
        "a custom id used twice": [row(button("same"), button("same"))],
        "a custom id over 100": [row(button("x" * 101))],
        "a label over 80": [row(button("b", label="x" * 81))],
        "a button without a custom id": [row({"type": 2, "style": 1, "label": "Go"})],
        "a select without options": [row(select("s", options=0))],
        "a select of 26 options": [row(select("s", options=26))],
        "an option value over 100": [row({**select("s"), "options": [{"label": "a", "value": "v" * 101}]})],
        "a placeholder over 150": [row(select("s", placeholder="p" * 151))],
    }
    for what, components in refused.items():
        answer = await call(discord_api, "POST", messages, {"content": "x", "components": components})
        assert code(answer) == (400, 50035), what
    fine = [row(button("a"), button("b", style=4)), row(select("s", options=25))]
    status, sent, _ = await call(discord_api, "POST", messages, {"content": "x", "components": fine})
    assert status == 200
    edit = f"{messages}/{sent['id']}"
    assert code(await call(discord_api, "PATCH", edit, {"components": [row(button("x" * 101))]})) == (
        400,
        50035,
    )


async def test_a_component_interaction_comes_only_from_what_a_message_shows_and_is_answered_in_time(
    discord_api: DiscordEmulator,
) -> None:
    messages = f"/channels/{GENERAL}/messages"
    components = [row(button("go")), row(select("pick"))]
    _, sent, _ = await call(discord_api, "POST", messages, {"content": "x", "components": components})
    with pytest.raises(AssertionError):
        await discord_api.click(sent["id"], "not-there")
    with pytest.raises(AssertionError):
        await discord_api.click(sent["id"], "pick", values=["not-offered"])
    clicked = await discord_api.click(sent["id"], "go")
    callback = f"/interactions/{clicked}/token-{clicked}/callback"
    assert code(await call(discord_api, "POST", callback, {"type": 8, "data": {"choices": []}})) == (
        400,
        50035,
    )
    assert (await call(discord_api, "POST", callback, {"type": 7, "data": {"content": "updated"}}))[0] == 200
    assert discord_api.state.messages[sent["id"]]["content"] == "updated"
    discord_api.initial_response_seconds = 0.0
    late = await discord_api.click(sent["id"], "pick", values=["v1"])
    assert code(
        await call(discord_api, "POST", f"/interactions/{late}/token-{late}/callback", {"type": 6})
    ) == (
        404,
        10062,
    )
