"""The engine end to end: real provider code against the loopback server, SQLite and PostgreSQL beneath."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable
from typing import Any

import pytest

from bot.config import ProviderSettings
from bot.engine import Engine
from bot.models import Attachment, Author, ConversationKey
from bot.reply import INTERNAL_ERROR
from bot.summaries import INSTRUCTIONS
from tests.support.asking import CHANNEL, answer, ask, first_render, msg, started, surface_of, until
from tests.support.clock import FakeClock
from tests.support.llm_server import LLMServer, Script
from tests.support.search_server import SearchServer

pytestmark = pytest.mark.both_databases

BO = Author("u-bo", "Bo")
MANAGER = Author("u-boss", "Boss", is_channel_manager=True)


async def test_a_reply_streams_in_growing_renders_and_ends_final(engine: Engine, llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=["One", " two", " three"], delay=0.02))
    surface = await answer(engine, msg("count"))
    texts = [text for text, _ in surface.renders]
    assert surface.started == 1
    assert texts[-1] == "One two three" and surface.renders[-1][1] is True
    assert all(not final for _, final in surface.renders[:-1])
    assert len(texts) >= 2 and all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))


async def test_memory_carries_names_and_earlier_turns(engine: Engine, llm: LLMServer) -> None:
    await ask(engine, "My name is Ada.")
    await ask(engine, "What is my name?", author=Author("u-bo", "Bo"))
    sent = llm.chat_requests()[-1].json["messages"]
    assert sent[0]["role"] == "system"
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "Ada: My name is Ada."),
        ("assistant", "echo: Ada: My name is Ada."),
        ("user", "Bo: What is my name?"),
    ]


async def test_memory_survives_a_restart(make_engine: Callable[..., Any], llm: LLMServer) -> None:
    first = await make_engine()
    await ask(first, "Remember 42.")
    await first.aclose()
    second = await make_engine()
    await ask(second, "What number?")
    contents = [m["content"] for m in llm.chat_requests()[-1].json["messages"][1:]]
    assert contents == ["Ada: Remember 42.", "echo: Ada: Remember 42.", "Ada: What number?"]


async def test_the_user_turn_is_stored_before_the_provider_is_asked(engine: Engine, llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=["late"], first_delay=0.3))
    task = asyncio.create_task(ask(engine, "stored first?"))
    while not llm.chat_requests():
        assert not task.done(), f"the reply ended before asking the provider: {task.result()!r}"
        await asyncio.sleep(0.01)
    turns, _ = await engine.store.recall(str(CHANNEL), 10_000)
    assert [(t.role, t.content) for t in turns] == [("user", "stored first?")]
    assert await task == "late"


async def assistant_row(engine: Engine) -> dict[str, Any]:
    """The last assistant turn as the store keeps it, read as is."""
    sql = "SELECT * FROM turns WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
    return await engine.store.read(lambda conn: dict(conn.exec_driver_sql(sql).mappings().one()))


async def test_the_assistant_turn_records_model_usage_cost_latency_and_outcome(
    engine: Engine, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["fine"], usage=(40, 2), cost=0.0005))
    await ask(engine, "hello")
    sql = "SELECT * FROM turns WHERE role = 'assistant'"  # the record is what the store keeps, read as is
    row = await engine.store.read(lambda conn: conn.exec_driver_sql(sql).mappings().one())
    assert (row["content"], row["model"], row["outcome"]) == ("fine", "openrouter/xiaomi/mimo-v2-flash", "ok")
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost"]) == (40, 2, 0.0005)
    assert row["latency_ms"] is not None and row["latency_ms"] >= 0


GPT_4O_MINI_PRICES = (0.00000015, 0.0000006)  # the loopback listing's USD per prompt and completion token


def listed_cost(prompt_tokens: int, completion_tokens: int) -> float:
    return prompt_tokens * GPT_4O_MINI_PRICES[0] + completion_tokens * GPT_4O_MINI_PRICES[1]


async def test_cost_comes_from_listed_prices_when_the_provider_reports_none(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(default_model="openrouter/openai/gpt-4o-mini")
    assert await ask(engine, "/model") == (
        "This channel uses openrouter/openai/gpt-4o-mini "
        "(context 128,000 tokens, $0.15 in / $0.60 out per M tokens, reads images)."
    )
    llm.enqueue(Script(tokens=["priced"], usage=(1000, 200)))
    await ask(engine, "hello")
    priced = await assistant_row(engine)
    llm.enqueue(Script(tokens=["reported"], usage=(1000, 200), cost=0.0123))
    await ask(engine, "again")
    reported = await assistant_row(engine)
    await engine.aclose()
    assert priced["cost"] == pytest.approx(listed_cost(1000, 200))
    assert reported["cost"] == 0.0123  # the provider's own figure wins


async def test_cost_covers_every_tool_round_and_a_fallback_models_prices(
    make_engine: Callable[..., Any], llm: LLMServer, search: SearchServer
) -> None:
    llm.models[1]["supported_parameters"] = ["tools"]
    engine = await make_engine(default_model="openrouter/openai/gpt-4o-mini", **search.settings())
    await ask(engine, "/search auto", author=MANAGER)
    llm.enqueue(
        Script(tokens=[], tool_calls=[("web_search", '{"query": "parley"}')], usage=(100, 10)),
        Script(tokens=["It shipped [1]."], usage=(300, 20)),
    )
    await ask(engine, "What shipped?")
    searched = await assistant_row(engine)
    await engine.aclose()
    assert (searched["prompt_tokens"], searched["completion_tokens"]) == (400, 30)
    assert searched["cost"] == pytest.approx(listed_cost(400, 30))

    fallbacks = {"openrouter/xiaomi/mimo-v2-flash": ["openrouter/openai/gpt-4o-mini"]}
    engine = await make_engine(fallbacks=fallbacks)  # mimo-v2-flash lists no prices
    llm.enqueue(Script(status=502), Script(tokens=["rescued"], usage=(1000, 200)))
    assert await ask(engine, "hi") == "rescued"
    rescued = await assistant_row(engine)
    await engine.aclose()
    assert rescued["model"] == "openrouter/openai/gpt-4o-mini"
    assert rescued["cost"] == pytest.approx(listed_cost(1000, 200))


async def test_streaming_replies_are_checkpointed_together_and_a_failed_batch_is_retried(
    make_engine: Callable[..., Any],
    llm: LLMServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rows are written at the first render; then the text of every streaming reply in one transaction
    every 2 s of the engine's clock; a batch that fails is logged, saved with the next, and the replies
    end as if nothing happened."""
    clock = FakeClock()
    engine = await make_engine(clock=clock)
    store = engine.store
    save = store.save_checkpoints
    batches: list[list[str]] = []
    saved: list[list[str]] = []

    async def failing_once(checkpoints: Any) -> None:
        batches.append(sorted(c.content for c in checkpoints))
        if len(batches) == 1:
            raise RuntimeError("database is locked")
        await save(checkpoints)
        saved.append(batches[-1])

    monkeypatch.setattr(store, "save_checkpoints", failing_once)
    gates = [asyncio.Semaphore(0), asyncio.Semaphore(0)]  # the loopback sends one token per release
    llm.enqueue(Script(tokens=list("ABCD"), gate=gates[0]), Script(tokens=list("wxyz"), gate=gates[1]))
    messages = [msg("tell me a story"), msg("and me", ConversationKey("test", "random"), BO)]
    replies, surfaces = [], []
    for message, gate in zip(messages, gates, strict=True):
        replies.append(await engine.accept(message, {"message": message.id}))
        gate.release()
        surfaces.append(await first_render(engine, message))
    async with asyncio.timeout(10):  # each reply's row is written after its first render
        while len(await store.streaming("test")) < 2:
            await asyncio.sleep(0.005)

    async def step(token_of_each: tuple[str, str]) -> None:
        for gate, surface, token in zip(gates, surfaces, token_of_each, strict=True):
            gate.release()
            await until(lambda s=surface, t=token: s.renders[-1][0].endswith(t), f"{token} shown")

    await step(("B", "x"))
    await clock.advance(2.0)  # the first batch: refused
    await until(lambda: len(batches) == 1 and "could not save 2 streaming replies" in caplog.text, "a log")
    await step(("C", "y"))
    await clock.advance(2.0)  # the next batch saves the newest text of both
    await until(lambda: len(saved) == 1, "a second batch, saved")
    kept = sorted(reply.content for reply in await store.streaming("test"))
    assert batches == [["AB", "wx"], ["ABC", "wxy"]] and kept == ["ABC", "wxy"]  # what a crash now keeps
    await step(("D", "z"))
    assert [await reply for reply in replies if reply is not None] == ["ok", "ok"]
    assert [surface.final for surface in surfaces] == ["ABCD", "wxyz"]
    assert await store.streaming("test") == []
    assert (await assistant_row(engine))["outcome"] == "ok"


async def test_context_is_trimmed_to_the_window_and_the_reply_says_so_once(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    small = ProviderSettings(base_url=llm.openai_base_url, models=["tiny"], context_length={"tiny": 1200})
    # The summary of what was left out never comes here: this is the note of a reply that goes without.
    llm.by_system[INSTRUCTIONS] = Script(tokens=["never"], gate=asyncio.Semaphore(0))
    engine = await make_engine(providers={"local": small}, default_model="local/tiny", summary_wait_seconds=0)
    finals = []
    llm.echo_usage = None  # no usage reported, so the estimate is not corrected mid-test
    for index in range(12):  # (echoed replies: the summary of what was left out asks the same server)
        finals.append(await ask(engine, f"message {index} " + "padding " * 40))
    finals.append(await ask(engine, "last question"))
    await engine.aclose()
    note = "\n\n_Older messages were left out to fit the model's context._"
    noted = [index for index, final in enumerate(finals) if final.endswith(note)]
    assert len(noted) == 1 and 0 < noted[0] < 12, finals
    assert all(
        final.startswith("echo: ") and "_" not in final for i, final in enumerate(finals) if i != noted[0]
    )
    replies = [r for r in llm.chat_requests() if r.json["messages"][0]["content"] != INSTRUCTIONS]
    sent = [m["content"] for m in replies[-1].json["messages"][1:]]
    assert sent[-1] == "Ada: last question"
    assert not any(s.startswith("Ada: message 0 ") for s in sent)
    assert any(s.startswith("Ada: message 11 ") for s in sent)


async def test_a_message_larger_than_the_window_gets_one_sentence(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    small = ProviderSettings(base_url=llm.openai_base_url, models=["tiny"], context_length={"tiny": 1200})
    engine = await make_engine(providers={"local": small}, default_model="local/tiny")
    reply = await ask(engine, "word " * 5000)
    await engine.aclose()
    assert reply.startswith("_Your message is too long for local/tiny") and llm.chat_requests() == []


async def test_models_are_per_channel_and_threads_inherit_until_they_choose(
    engine: Engine, llm: LLMServer
) -> None:
    other = ConversationKey("test", "random")
    thread = ConversationKey("test", "general", "t1")
    assert await ask(engine, "/model openrouter/openai/gpt-4o-mini", author=MANAGER) == (
        "This channel now uses openrouter/openai/gpt-4o-mini."
    )
    await ask(engine, "in general")
    await ask(engine, "in random", key=other)
    await ask(engine, "in the thread", key=thread)
    assert await ask(engine, "/model xiaomi/mimo-v2-flash", key=thread, author=MANAGER) == (
        "This thread now uses openrouter/xiaomi/mimo-v2-flash."
    )
    await ask(engine, "thread again", key=thread)
    await ask(engine, "general again")
    assert [r.json["model"] for r in llm.chat_requests()] == [
        "openai/gpt-4o-mini",
        "xiaomi/mimo-v2-flash",
        "openai/gpt-4o-mini",
        "xiaomi/mimo-v2-flash",
        "openai/gpt-4o-mini",
    ]
    # A thread's memory is its own.
    assert llm.chat_requests()[3].json["messages"][1]["content"] == "Ada: in the thread"


async def test_settings_changes_need_permission(engine: Engine, llm: LLMServer) -> None:
    refusals = {
        "/model openrouter/openai/gpt-4o-mini": "the model",
        "/system Talk like a pirate.": "the system prompt",
        "/search on": "web_search",
        "/skills read_page off": "read_page",
        "/autoreply on": "autoreply",
    }
    for command, what in refusals.items():
        assert await ask(engine, command) == f"Only channel managers and Parley admins can change {what}."
    settings = await engine.settings_for(CHANNEL)
    assert (settings.model, settings.system_prompt, settings.skills, settings.autoreply) == (
        "openrouter/xiaomi/mimo-v2-flash",
        None,
        {},
        False,
    )
    admin = Author("u-admin", "Admin")
    engine.settings.admin_user_ids.append("u-admin")
    assert await ask(engine, "/search on", author=admin) == "web_search in this channel is now on."
    role_holder = Author("u-r", "R", role_ids=("role-ops",))
    engine.settings.admin_role_ids.append("role-ops")
    assert await ask(engine, "/autoreply on", author=role_holder) == (
        "Parley will now answer every message in this channel."
    )


async def test_system_prompt_search_and_reset_commands(engine: Engine, llm: LLMServer) -> None:
    assert await ask(engine, "/system") == "This channel uses the default system prompt."
    assert (
        await ask(engine, "/system Answer in French.", author=MANAGER)
        == "System prompt set for this channel."
    )
    await ask(engine, "bonjour")
    assert llm.chat_requests()[-1].json["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert (
        await ask(engine, "/system clear", author=MANAGER)
        == "This channel is back to the default system prompt."
    )
    assert (
        await ask(engine, "/search sometimes", author=MANAGER)
        == "web_search can be off, on or auto, not 'sometimes'."
    )
    assert await ask(engine, "/search auto", author=MANAGER) == "web_search in this channel is now auto."
    assert (
        await ask(engine, "/search")
        == "web_search in this channel is auto. Change it with /skills web_search off|on|auto."
    )
    assert await ask(engine, "/reset") == "Forgot 2 messages in this channel."
    await ask(engine, "fresh start")
    assert [m["role"] for m in llm.chat_requests()[-1].json["messages"]] == ["system", "user"]


async def test_unknown_models_and_commands_get_suggestions(engine: Engine) -> None:
    assert await ask(engine, "/model openrouter/xiaomi/mimo-v3-flash", author=MANAGER) == (
        "Unknown model openrouter/xiaomi/mimo-v3-flash. Did you mean openrouter/xiaomi/mimo-v2-flash?"
    )
    assert await ask(engine, "/model anthropic/claude-x", author=MANAGER) == (
        "The anthropic provider is not configured; set ANTHROPIC_API_KEY to use it."
    )
    assert await ask(engine, "/modle") == "Unknown command /modle. Did you mean /model? Try /help."
    assert (await engine.settings_for(CHANNEL)).model == "openrouter/xiaomi/mimo-v2-flash"


async def test_model_listing_and_current_model(engine: Engine, llm: LLMServer) -> None:
    assert await ask(engine, "/models gpt") == "openrouter/openai/gpt-4o-mini"
    listing = await ask(engine, "/models")
    assert listing.splitlines() == [
        "openrouter/openai/gpt-4o-mini",
        "openrouter/xiaomi/mimo-v2-flash  ← current",
    ]
    assert (
        await ask(engine, "/model")
        == "This channel uses openrouter/xiaomi/mimo-v2-flash (context 262,144 tokens)."
    )
    assert await engine.model_choices(CHANNEL, "") == [
        "openrouter/xiaomi/mimo-v2-flash",
        "openrouter/openai/gpt-4o-mini",
    ]
    assert await engine.model_choices(CHANNEL, "4o") == ["openrouter/openai/gpt-4o-mini"]
    assert sum(1 for r in llm.requests if r.path == "/v1/models") == 1  # the listing is cached


@pytest.mark.parametrize(
    ("script", "sentence"),
    [
        (Script(status=401), "The openrouter API key was rejected; an admin needs to check it."),
        (Script(status=402), "The openrouter account is out of credits; an admin needs to top it up."),
        (
            Script(status=404),
            "openrouter does not know the model xiaomi/mimo-v2-flash; pick another with /model.",
        ),
        (
            Script(status=429, retry_after=90),
            "openrouter is rate-limiting us right now; try again in a minute.",
        ),
        (Script(status=503), "openrouter is unavailable right now; try again shortly."),
        (
            Script(status=400, body={"error": {"message": "maximum context length exceeded"}}),
            "This conversation is too long for xiaomi/mimo-v2-flash; "
            "use /reset or a model with a larger context.",
        ),
    ],
)
async def test_each_failure_class_ends_the_reply_in_one_sentence(
    engine: Engine, llm: LLMServer, script: Script, sentence: str
) -> None:
    llm.enqueue(script)
    assert await ask(engine, "hello?") == f"_{sentence}_"
    turns, _ = await engine.store.recall(str(CHANNEL), 10_000)
    assert [(t.role, t.outcome) for t in turns] == [("user", None), ("assistant", "error")]


async def test_a_failure_after_text_keeps_the_text_and_says_it_was_cut_off(
    engine: Engine, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["Partial", " answer"], error_after=2))
    reply = await ask(engine, "long question")
    assert reply == "Partial answer\n\n_openrouter is unavailable right now; try again shortly._"
    turns, _ = await engine.store.recall(str(CHANNEL), 10_000)
    assert (turns[-1].content, turns[-1].outcome) == ("Partial answer", "cut_off")


async def test_timeouts_end_the_reply(make_engine: Callable[..., Any], llm: LLMServer) -> None:
    engine = await make_engine(first_token_timeout=0.3)
    llm.enqueue(Script(first_delay=3))
    assert await ask(engine, "anyone?") == "_openrouter took too long to answer; try again._"
    await engine.aclose()
    engine = await make_engine(reply_timeout=0.5)
    llm.enqueue(Script(tokens=["slow"] * 50, delay=0.1))
    reply = await ask(engine, "take your time")
    await engine.aclose()
    assert reply.startswith("slowslow") and reply.endswith(
        "_The reply took longer than 0.5 seconds and was stopped._"
    )


async def test_retries_and_fallbacks_come_from_settings(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    fallbacks = {"openrouter/xiaomi/mimo-v2-flash": ["openrouter/openai/gpt-4o-mini"]}
    engine = await make_engine(max_retries=1, fallbacks=fallbacks)
    llm.enqueue(Script(status=502), Script(status=502), Script(tokens=["rescued"]))
    assert await ask(engine, "hi") == "rescued"
    await engine.aclose()
    assert [r.json["model"] for r in llm.chat_requests()] == ["xiaomi/mimo-v2-flash"] * 2 + [
        "openai/gpt-4o-mini"
    ]


async def test_reasoning_is_hidden_by_default_and_shown_as_a_quote_on_request(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine()
    llm.enqueue(Script(reasoning=["Thinking", " hard"], tokens=["Answer"]))
    assert await ask(engine, "q") == "Answer"
    await engine.aclose()
    engine = await make_engine(show_reasoning=True)
    llm.enqueue(Script(reasoning=["Thinking", "\nhard"], tokens=["Answer"]))
    assert await ask(engine, "q") == "> Thinking\n> hard\n\nAnswer"
    await engine.aclose()


async def test_empty_and_length_limited_replies_are_explained(engine: Engine, llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=[]))
    assert await ask(engine, "say nothing") == "_The model returned an empty reply._"
    llm.enqueue(Script(tokens=["Once upon"], finish="length"))
    assert await ask(engine, "story") == "Once upon\n\n_Cut off: the reply reached its length limit._"


async def test_one_person_is_answered_in_order_and_other_people_meanwhile(
    engine: Engine, llm: LLMServer
) -> None:
    llm.enqueue(
        Script(tokens=["first"], first_delay=0.4), Script(tokens=["to Bo"]), Script(tokens=["second"])
    )
    ada_a, ada_b, bo_c = msg("a"), msg("b"), msg("c", author=BO)
    first = await engine.accept(ada_a, {"message": ada_a.id})
    assert first is not None
    while not llm.chat_requests():
        assert not first.done(), f"the reply ended before asking the provider: {first.result()!r}"
        await asyncio.sleep(0.01)
    second = await engine.accept(ada_b, {"message": ada_b.id})
    bo = await engine.accept(bo_c, {"message": bo_c.id})
    assert first and second and bo
    assert await bo == "ok"
    # Bo was answered while Ada's first reply still streamed; Ada's next message waited for it.
    assert not first.done() and not second.done()
    assert [r.json["messages"][-1]["content"] for r in llm.chat_requests()] == ["Ada: a", "Bo: c"]
    # Bo's reply saw the conversation as stored when it started: everyone's questions, no unfinished answer.
    assert [m["content"] for m in llm.chat_requests()[1].json["messages"][1:]] == [
        "Ada: a",
        "Ada: b",
        "Bo: c",
    ]
    assert (await first, await second) == ("ok", "ok")
    assert surface_of(engine, ada_a).final == "first" and surface_of(engine, ada_b).final == "second"
    # Ada's second reply: the conversation up to her question, her first answer right after its question.
    assert [m["content"] for m in llm.chat_requests()[2].json["messages"][1:]] == [
        "Ada: a",
        "first",
        "Ada: b",
    ]
    turns, _ = await engine.store.recall(str(CHANNEL), 10_000)
    assert [t.content for t in turns] == ["a", "first", "b", "second", "c", "to Bo"]


async def test_attachments_reach_the_model(engine: Engine, llm: LLMServer) -> None:
    await ask(engine, "/model openrouter/openai/gpt-4o-mini", author=MANAGER)
    files = (
        Attachment("notes.txt", "text/plain", 5, data=b"hello"),
        Attachment("cat.png", "image/png", 4, data=b"\x89PNG"),
        Attachment("deck.pdf", "application/pdf", 4, data=b"%PDF"),
    )
    reply = await ask(engine, "look", attachments=files)
    content = llm.chat_requests()[-1].json["messages"][-1]["content"]
    assert content[0]["text"].startswith('Ada: look\n\n<file name="notes.txt">\nhello\n</file>')
    assert content[1]["image_url"]["url"] == "data:image/png;base64,iVBORw=="
    assert reply.endswith("_deck.pdf is not a file type I can read._")


async def test_an_internal_error_still_finishes_the_reply(
    engine: Engine, llm: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(engine.windows, "recall", broken)
    assert await ask(engine, "hello") == f"_{INTERNAL_ERROR}_"


async def test_cancelling_a_reply_closes_the_message_and_keeps_the_text(
    engine: Engine, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["kept", " text", " lost"], stall_after=2))
    message = msg("go")
    task = await engine.accept(message, {"message": message.id})
    assert task is not None
    surface = await first_render(engine, message)
    while surface.renders[-1] != ("kept text", False):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert surface_of(engine, message).final == "kept text\n\n_Cut off: Parley is restarting._"
    turns, _ = await engine.store.recall(str(CHANNEL), 10_000)
    assert (turns[-1].content, turns[-1].outcome) == ("kept text", "cut_off")
    assert await engine.store.pending("test") == []


def claude(llm: LLMServer) -> dict[str, Any]:
    """Settings for an Anthropic provider named claude, answering by default."""
    provider = ProviderSettings(base_url=llm.anthropic_base_url, api="anthropic", api_key="sk-ant")
    return {"providers": {"claude": provider}, "default_model": "claude/claude-sonnet-4-5"}


async def test_context_window_stops_and_refusals_are_explained(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(**claude(llm))
    llm.enqueue(Script(tokens=["The story so far"], finish="model_context_window_exceeded"))
    assert await ask(engine, "go on") == (
        "The story so far\n\n"
        "_Cut off: the conversation filled the model's context window; /reset starts afresh._"
    )
    llm.enqueue(Script(tokens=[], finish="refusal"))
    assert await ask(engine, "something risky") == "_The provider's safety filters stopped this reply._"
    await engine.aclose()
    llm.enqueue(Script(tokens=["Partly"], finish="content_filter"))  # OpenAI's name for it
    assert await ask_once(make_engine, "again") == (
        "Partly\n\n_The provider's safety filters stopped this reply._"
    )


async def ask_once(make_engine: Callable[..., Any], text: str, **settings: Any) -> str:
    """A question to an engine of its own, with these settings."""
    return await ask(await make_engine(**settings), text)


@pytest.mark.parametrize("api", ["openrouter", "anthropic"])
async def test_a_tool_round_sends_the_models_signed_reasoning_back(
    make_engine: Callable[..., Any], llm: LLMServer, search: SearchServer, api: str
) -> None:
    engine = await make_engine(**search.settings(), **(claude(llm) if api == "anthropic" else {}))
    await ask(engine, "/search auto", author=MANAGER)
    llm.enqueue(
        Script(
            tokens=[],
            reasoning=["Search ", "first."],
            signature="EqQBCkgIARABGAIiQL",
            redacted="RU5DUllQVEVE",
            tool_calls=[("web_search", '{"query": "parley release"}')],
        ),
        Script(tokens=["It shipped on Monday [1]."]),
    )
    reply = await ask(engine, "When did Parley 2.0 ship?")
    await engine.aclose()
    assert reply.startswith("It shipped on Monday [1].\n\n**Sources**\n[1] [Parley 2.0 | released]")
    second = llm.chat_requests()[-1]
    assistant = next(m for m in second.json["messages"] if m["role"] == "assistant")
    if api == "anthropic":
        assert [block["type"] for block in assistant["content"]] == [
            "thinking",
            "redacted_thinking",
            "tool_use",
        ]
        assert assistant["content"][0]["signature"] == "EqQBCkgIARABGAIiQL"
    else:
        assert [d["type"] for d in assistant["reasoning_details"]] == [
            "reasoning.text",
            "reasoning.encrypted",
        ]
        assert assistant["reasoning_details"][0]["text"] == "Search first."


async def test_a_provider_that_is_not_running_is_named_in_the_reply(
    make_engine: Callable[..., Any],
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # nothing listens here
        base = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
        local = ProviderSettings(base_url=base, models=["qwen3-8b"])
        reply = await ask_once(
            make_engine, "hello?", providers={"lmstudio": local}, default_model="lmstudio/qwen3-8b"
        )
    assert reply == (
        f"_Nothing answers at {base}; check that the lmstudio server is running and its address is right._"
    )


async def test_a_message_behind_its_senders_reply_looks_up_once_its_turn_comes(
    engine: Engine, llm: LLMServer
) -> None:
    """A message that arrives while its sender's reply is still streaming reads the conversation when its
    turn comes, not when it was accepted: its request carries that whole answer, and a system prompt set
    meanwhile."""
    gate, first, _ = await started(engine, llm, ["One", " two"])
    second = msg("and then?")
    waiting = await engine.accept(second, {"message": second.id})
    assert waiting is not None
    line = "system Answer like a pirate."
    assert (await engine.run_command(msg("/" + line, author=MANAGER), line)).text.startswith("System prompt")
    gate.release()
    await first
    await waiting
    system, *turns = llm.chat_requests()[-1].json["messages"]
    assert system == {"role": "system", "content": "Answer like a pirate."}
    assert [turn["content"] for turn in turns] == ["Ada: tell me", "One two", "Ada: and then?"]
