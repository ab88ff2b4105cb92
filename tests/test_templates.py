"""Prompt templates and personas in the engine: who may do what, where they belong, the sandbox, the
limits, and a run accepted as the question it makes. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from bot import templates
from bot.engine import Engine
from bot.models import Author, CommandResult, ConversationKey, Message
from bot.template_text import OUTPUT_LIMIT, TEXT_LIMIT, VALUE_LIMIT, TemplateRefused, render, variables
from tests.support.asking import ADA, CHANNEL, answer, msg
from tests.support.llm_server import LLMServer

pytestmark = pytest.mark.both_databases

BOB = Author("u-bob", "Bob")
MANAGER = Author("u-meg", "Meg", is_channel_manager=True)
SERVER = "g1"


async def run(engine: Engine, line: str, author: Author = ADA, **extra: object) -> str:
    extra.setdefault("server_id", SERVER)
    message = msg("/" + line, author=author, **extra)  # type: ignore[arg-type]
    return (await engine.run_command(message, line)).text


async def test_anyone_saves_but_only_the_saver_or_a_manager_replaces_or_deletes(engine: Engine) -> None:
    assert await run(engine, "prompt save greet Hello {{ who }}.") == (
        "Saved the template greet. It asks for who. Run it with /prompt greet."
    )
    assert await run(engine, "prompt save greet Hi.", BOB) == (
        "greet was saved by Ada; only they or a manager can replace it."
    )
    assert await run(engine, "prompt delete greet", BOB) == (
        "Only Ada, who saved greet, or a manager can delete it."
    )
    assert await run(engine, "prompt save greet Hi {{ who }}!") == (
        "Replaced the template greet. It asks for who. Run it with /prompt greet."
    )
    assert await run(engine, "prompt show greet", BOB) == "Template greet (saved by Ada):\nHi {{ who }}!"
    assert (await run(engine, "prompt save greet Howdy.", MANAGER)).startswith("Replaced the template greet.")
    assert await run(engine, "prompt list", BOB) == "Templates here: greet. Run one with /prompt NAME."
    assert await run(engine, "prompt delete greet", MANAGER) == "Deleted the template greet."
    assert await run(engine, "prompt list") == (
        "No templates are saved here yet. Save one with /prompt save NAME TEXT."
    )


async def test_templates_belong_to_their_server_and_in_a_dm_to_the_person(engine: Engine) -> None:
    await run(engine, "prompt save greet Hello.")
    assert await run(engine, "prompt list", server_id="g2") == (
        "No templates are saved here yet. Save one with /prompt save NAME TEXT."
    )
    dm = ConversationKey("test", "dm-ada")
    assert "No templates" in await run(engine, "prompt list", key=dm, server_id=None)
    await run(engine, "prompt save mine Mine.", key=dm, server_id=None)
    assert await run(engine, "prompt list", key=dm, server_id=None) == (
        "Templates here: mine. Run one with /prompt NAME."
    )
    assert "No templates" in await run(
        engine, "prompt list", BOB, key=ConversationKey("test", "dm-bob"), server_id=None
    )


@pytest.mark.parametrize(
    ("line", "answer_"),
    [
        ("prompt save Bad!Name Hi", "'bad!name' is not a prompt name: use up to 32 lower-case letters, "
         "digits, - and _, starting with a letter or digit."),
        ("prompt save list Hi", "'list' is a word /prompt itself uses; choose another name."),
        ("prompt save broken Hi {{ who", "The template does not parse: unexpected end of template, "
         "expected 'end of print statement' (line 1)."),
        ("prompt save two Hi\n{% if %}", "The template does not parse: Expected an expression, got "
         "'end of statement block' (line 2)."),
        ("prompt save sneaky {{ who.__class__ }}",
         "Templates may not reach into '__class__': the sandbox refuses internals."),
        ("prompt save sneaky {{ who['__globals__'] }}",
         "Templates may not reach into '__globals__': the sandbox refuses internals."),
        ("prompt save loops {% for a in x %}{% for b in x %}{% endfor %}{% endfor %}",
         "Templates may use one level of {% for %}, not a loop inside a loop."),
        ("prompt save sets {% set a = 1 %}", "Templates may use {{ }}, if and for, not {% set %}."),
        ("prompt save wide {{ x|center(1000000) }}", "The template does not parse: No filter named 'center' "
         "(line 1)."),
        ("prompt save many {{a}}{{b}}{{c}}{{d}}{{e}}{{f}}", "That template has 6 variables; a template may "
         "have at most 5 (besides user, channel, date and time)."),
        ("prompt save huge " + "x" * (TEXT_LIMIT + 1),
         f"That template is {TEXT_LIMIT + 1:,} characters; the limit is {TEXT_LIMIT:,}."),
        ("prompt show nothing", "There is no template named nothing here; /prompt list shows them."),
        ("prompt greet", "Run a template with the command itself, which can ask for what is missing: "
         "/prompt greet"),
    ],
)  # fmt: skip
async def test_bad_input_gets_one_sentence(engine: Engine, line: str, answer_: str) -> None:
    assert await run(engine, line) == answer_


def test_the_sandbox_refuses_internals_and_text_bombs_when_run() -> None:
    """What only shows at run time: attribute access (even to a str's methods), repetition, % and a
    large range are refused by the sandbox, in one sentence."""
    refused = {
        "{{ who.upper() }}": "access to attribute 'upper' of 'str' object is unsafe",
        "{{ 'a' * 10**9 }}": "that repetition makes too much text",
        "{{ '%0999999999d' % 1 }}": "templates may not format text with %",
        "{% for i in range(1000) %}{{ i }}{% endfor %}": "range() is limited to 100 numbers in a template",
        "{{ who.__class__ }}": "the sandbox refuses internals",
    }
    for text, reason in refused.items():
        with pytest.raises(TemplateRefused, match="refuse") as raised:
            render(text, {"who": "Ada"})
        assert reason in str(raised.value)
    with pytest.raises(TemplateRefused, match=f"more than {OUTPUT_LIMIT:,} characters"):
        render("{% for i in range(100) %}{{ who }}{% endfor %}", {"who": "x" * 200})
    assert render("{% for i in range(3) %}{{ loop.index }}{% endfor %} {{ who|upper }}", {"who": "ada"}) == (
        "123 ADA"
    )
    assert variables("{{ b }} {{ a }} {{ user }} {{ b }}") == ("b", "a")


async def test_a_run_asks_for_missing_values_then_is_accepted_as_its_question(
    engine: Engine, llm: LLMServer
) -> None:
    await run(engine, "prompt save brief Brief {{ user }} on {{ topic }} in {{ channel }} ({{ style }}).")
    asking = msg("", server_id=SERVER)
    form = await templates.prepare(engine, asking, "brief topic=tides", "general")
    assert form == templates.Form("brief", (("topic", "tides"), ("style", "")))
    assert (await templates.prepare(engine, asking, "brief style=x nope=1")) == CommandResult(
        "brief has no variable 'nope'; its variables are: topic, style."
    )
    too_long = await templates.prepare(engine, asking, f"brief style={'x' * (VALUE_LIMIT + 1)}")
    assert too_long == CommandResult(
        f"The value of style is {VALUE_LIMIT + 1:,} characters; the limit is {VALUE_LIMIT:,}."
    )
    assert await templates.prepare(engine, asking, 'brief topic="tides') == CommandResult(
        'Quote a value with spaces in it, and close the quote: topic="a b".'
    )
    assert await templates.fill(engine, asking, "brief", {"topic": "tides", "style": " "}) == CommandResult(
        "brief still needs a value for style."
    )
    filled = await templates.fill(engine, asking, "brief", {"topic": "tides", "style": "short"}, "general")
    assert filled == "Brief Ada on tides in general (short)."
    assert isinstance(filled, str)
    reply = await answer(engine, templates.question(asking, filled))
    assert reply.final == "echo: Ada: Brief Ada on tides in general (short)."
    turns = await engine.store.history(str(CHANNEL), 10)
    assert [t.content for t in turns if t.role == "user"] == ["Brief Ada on tides in general (short)."]


async def test_a_template_that_reads_as_a_command_is_still_a_question(engine: Engine, llm: LLMServer) -> None:
    await run(engine, "prompt save sneaky /reset")
    asking = msg("", server_id=SERVER)
    await answer(engine, msg("remember this", server_id=SERVER))
    text = await templates.prepare(engine, asking, "sneaky")
    assert text == "/reset"
    reply = await answer(engine, templates.question(asking, str(text)))
    assert reply.final == "echo: Ada: /reset"
    assert len([t for t in await engine.store.history(str(CHANNEL), 10) if t.role == "user"]) == 2


async def test_a_persona_saves_and_applies_model_system_prompt_and_skills(engine: Engine) -> None:
    other = ConversationKey("test", "random")
    await run(engine, "model openrouter/openai/gpt-4o-mini", MANAGER)
    await run(engine, "system Answer like a pirate.", MANAGER)
    await run(engine, "skills web_search off", MANAGER)
    saved = await run(engine, "persona save pirate", BOB)
    assert saved == (
        "Saved the persona pirate: openrouter/openai/gpt-4o-mini, its own system prompt, skills: "
        "channel_history auto, read_page auto, web_search off. "
        "Apply it anywhere here with /persona use pirate."
    )
    assert await run(engine, "persona use pirate", BOB, key=other) == (
        "Only channel managers and Parley admins can apply a persona."
    )
    assert (await engine.settings_for(other)).model == "openrouter/xiaomi/mimo-v2-flash"
    assert await run(engine, "persona use pirate", MANAGER, key=other) == (
        "This channel now uses the persona pirate: openrouter/openai/gpt-4o-mini, its own system prompt, "
        "skills: channel_history auto, read_page auto, web_search off."
    )
    applied = await engine.settings_for(other)
    assert (applied.model, applied.system_prompt) == (
        "openrouter/openai/gpt-4o-mini",
        "Answer like a pirate.",
    )
    assert applied.skills["web_search"] == "off"
    assert await run(engine, "persona list") == "Personas here: pirate. Apply one with /persona use NAME."
    assert await run(engine, "persona delete pirate", ADA) == (
        "Only Bob, who saved pirate, or a manager can delete it."
    )
    assert await run(engine, "persona delete pirate", BOB) == "Deleted the persona pirate."
    assert await run(engine, "persona use pirate", MANAGER) == (
        "There is no persona named pirate here; /persona list shows them."
    )
    assert await run(engine, "persona wear pirate") == (
        "Usage: /persona save NAME, /persona use NAME, /persona list or /persona delete NAME."
    )


async def test_autocomplete_choices_are_the_templates_then_the_verbs(engine: Engine) -> None:
    for name in ("standup", "summary", "haiku"):
        await run(engine, f"prompt save {name} Hi.")
    asking = Message(key=CHANNEL, author=ADA, text="", server_id=SERVER)
    assert await templates.choices(engine, asking, "S") == ["standup", "summary", "save", "show"]
    assert await templates.choices(engine, asking, "h") == ["haiku"]
    assert await templates.choices(engine, asking, "%") == []  # LIKE's wildcards are literal
