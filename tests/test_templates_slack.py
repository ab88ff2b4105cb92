"""/parley prompt on Slack through the real Bolt app: runs posted and answered in their thread, forms
(views.open) for missing values, their view_submission, and the loopback Slack refusing what Slack does."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from tests.support.llm_server import LLMServer
from tests.support.slack_api import SlackAPI, signed_headers
from tests.support.slack_harness import (
    ALICE,
    BOB,
    SECRET,
    Harness,
    serving,
    until,
)

HAIKU = "Write a haiku about {{ topic }} in {{ mood }} for {{ user }} in {{ channel }}."


async def command(harness: Harness, text: str, user: str = ALICE.id) -> dict[str, Any]:
    """Run `/parley TEXT` in #general; the answer it sent to its response URL, if any."""
    before = len(harness.slack.responses)
    assert await harness.command(text, user=user, channel_name="general") == 200
    await until(lambda: len(harness.slack.responses) > before or harness.slack.calls_to("views.open"), text)
    return harness.slack.responses[before] if len(harness.slack.responses) > before else {}


async def submit(harness: Harness, payload: dict[str, Any]) -> tuple[int, str]:
    """Post a view_submission as Slack does (signed, form-encoded); the status and the ack's body."""
    body = "payload=" + quote(json.dumps(payload))
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(body, SECRET)}
    async with harness.http.post(harness.url, data=body, headers=headers) as response:
        return response.status, await response.text()


async def test_a_run_with_every_value_is_posted_and_answered_in_its_thread(harness: Harness) -> None:
    saved = await command(harness, f"prompt save haiku {HAIKU}")
    assert saved == {
        "text": "Saved the template haiku. It asks for topic, mood. Run it with /parley prompt haiku.",
        "response_type": "ephemeral",
    }
    assert (
        await harness.command(
            'prompt haiku topic=rain mood="a calm mood"', user=ALICE.id, channel_name="general"
        )
        == 200
    )
    await harness.finished_streams(1)
    question = "Write a haiku about rain in a calm mood for Alice in general."
    (post,) = [m for m in harness.slack.replies("C1") if m.thread_ts is None]
    assert post.text == f"*Alice* asked with `/parley prompt haiku`: {question}"
    assert [m.text for m in harness.slack.thread("C1", post.ts)] == [f"echo: Alice: {question}"]
    assert not harness.slack.calls_to("views.open")


async def test_missing_values_open_a_form_whose_submission_is_answered(harness: Harness) -> None:
    await command(harness, f"prompt save haiku {HAIKU}")
    await command(harness, "prompt haiku topic=snow", user=BOB.id)
    (opened,) = harness.slack.calls_to("views.open")
    assert opened.ok
    (view_id, view), *_ = harness.slack.views.items()
    assert view["title"] == {"type": "plain_text", "text": "haiku"}
    inputs = [(b["block_id"], b["element"].get("initial_value")) for b in view["blocks"]]
    assert inputs == [("topic", "snow"), ("mood", None)]
    status, body = await submit(harness, harness.slack.view_submission(view_id, {"mood": "joy"}, user=BOB.id))
    assert (status, body) == (200, "")  # the form closes
    await harness.finished_streams(1)
    question = "Write a haiku about snow in joy for Bob in general."
    (post,) = [m for m in harness.slack.replies("C1") if m.thread_ts is None]
    assert [m.text for m in harness.slack.thread("C1", post.ts)] == [f"echo: Bob: {question}"]


async def test_a_submission_for_a_deleted_template_is_answered_in_the_form(harness: Harness) -> None:
    await command(harness, "prompt save haiku About {{ topic }}.")
    await command(harness, "prompt haiku")
    (view_id,) = harness.slack.views
    assert (await command(harness, "prompt delete haiku"))["text"] == "Deleted the template haiku."
    status, body = await submit(
        harness, harness.slack.view_submission(view_id, {"topic": "x"}, user=ALICE.id)
    )
    assert status == 200
    assert json.loads(body) == {
        "response_action": "errors",
        "errors": {"topic": "There is no template named haiku here; /parley prompt list shows them."},
    }
    assert not harness.llm.chat_requests()


async def test_a_form_slack_would_not_open_is_explained(harness: Harness) -> None:
    harness.slack.trigger_seconds = 0.0  # the trigger expired before views.open
    await command(harness, "prompt save haiku About {{ topic }}.")
    await command(harness, "prompt haiku")
    await until(lambda: len(harness.slack.responses) >= 2, "the explanation")
    assert harness.slack.responses[1] == {
        "text": "Slack did not open the form (expired_trigger_id); run /parley prompt haiku again.",
        "response_type": "ephemeral",
    }


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("prompt nothing-here",
         "There is no template named nothing-here here; /parley prompt list shows them."),
        ("prompt Bad!Name",
         "'bad!name' is not a prompt name: use up to 32 lower-case letters, digits, - and _, "
         "starting with a letter or digit."),
        ("prompt save broken Hi {{ who", "The template does not parse: unexpected end of template, "
         "expected 'end of print statement' (line 1)."),
        ("prompt save sneaky {{ who.__class__.__mro__ }}",
         "Templates may not reach into '__mro__': the sandbox refuses internals."),
    ],
)  # fmt: skip
async def test_bad_input_gets_one_sentence(harness: Harness, text: str, answer: str) -> None:
    assert (await command(harness, text))["text"] == answer


async def test_the_loopback_slack_opens_a_view_once_within_3_seconds_and_checks_it(slack: SlackAPI) -> None:
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
    good = {
        "type": "modal",
        "callback_id": "form",
        "title": {"type": "plain_text", "text": "A form"},
        "submit": {"type": "plain_text", "text": "Ask"},
        "blocks": [
            {
                "type": "input",
                "block_id": "a",
                "label": {"type": "plain_text", "text": "A"},
                "element": {"type": "plain_text_input", "action_id": "a"},
            }
        ],
    }

    async def refusal(trigger_id: str, view: dict[str, Any]) -> str:
        with pytest.raises(SlackApiError) as raised:
            await client.views_open(trigger_id=trigger_id, view=view)
        return str(raised.value.response["error"])

    trigger = slack.trigger()
    assert (await client.views_open(trigger_id=trigger, view=good))["view"]["id"]
    assert await refusal(trigger, good) == "exchanged_trigger_id"
    assert await refusal("12.34.made-up", good) == "invalid_trigger_id"
    slack.trigger_seconds = 0.0
    assert await refusal(slack.trigger(), good) == "expired_trigger_id"
    slack.trigger_seconds = 3.0
    too_long = {**good, "title": {"type": "plain_text", "text": "x" * 25}}
    no_submit = {key: value for key, value in good.items() if key != "submit"}
    too_many = {**good, "blocks": [{**good["blocks"][0], "block_id": f"b{i}"} for i in range(101)]}
    wrong_input = {**good, "blocks": [{**good["blocks"][0], "element": {"type": "checkboxes"}}]}
    metadata = {**good, "private_metadata": "x" * 3001}
    for view in (too_long, no_submit, too_many, wrong_input, metadata):
        assert await refusal(slack.trigger(), view) == "invalid_arguments"


async def test_a_form_opened_before_a_restart_is_answered_after_it(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> None:
    settings = slack_settings()
    async with serving(slack, llm, settings) as before:
        await command(before, "prompt save brief Brief on {{ topic }}.")
        await command(before, "prompt brief")
    (view_id,) = slack.views
    async with serving(slack, llm, settings) as after:
        status, body = await submit(after, slack.view_submission(view_id, {"topic": "tides"}, user=ALICE.id))
        assert (status, body) == (200, "")
        await after.finished_streams(1)
    (post,) = [m for m in slack.replies("C1") if m.thread_ts is None]
    assert [m.text for m in slack.thread("C1", post.ts)] == ["echo: Alice: Brief on tides."]
