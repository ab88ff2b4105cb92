"""Model names: a bare id that exactly one provider offers means that provider's model, in replies, in
/model and in `parley check` alike."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from bot.catalog import UnknownModelError
from bot.engine import Engine
from tests.support.asking import CHANNEL, ask
from tests.support.llm_server import LLMServer, Script


async def test_a_bare_default_model_answers_replies_and_shows_in_model(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(default_model="openai/gpt-4o-mini")
    try:
        assert await ask(engine, "hello") == "echo: Ada: hello"
        assert llm.chat_requests()[-1].json["model"] == "openai/gpt-4o-mini"  # the openrouter id
        assert await ask(engine, "/model") == (
            "This channel uses openai/gpt-4o-mini "
            "(context 128,000 tokens, $0.15 in / $0.60 out per M tokens, reads images)."
        )
        assert await engine.catalog.canonical("openai/gpt-4o-mini") == ("openrouter/openai/gpt-4o-mini", None)
        turns, _ = await engine.store.recall(str(CHANNEL), 10_000)
        assert [t.role for t in turns] == ["user", "assistant"]
    finally:
        await engine.aclose()


async def test_fallbacks_written_for_the_full_name_serve_a_bare_default(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    fallbacks = {"openrouter/xiaomi/mimo-v2-flash": ["openrouter/openai/gpt-4o-mini"]}
    engine = await make_engine(default_model="xiaomi/mimo-v2-flash", fallbacks=fallbacks)
    llm.enqueue(Script(status=502), Script(tokens=["rescued"]))
    try:
        assert await ask(engine, "hi") == "rescued"
    finally:
        await engine.aclose()
    assert [r.json["model"] for r in llm.chat_requests()] == ["xiaomi/mimo-v2-flash", "openai/gpt-4o-mini"]


async def test_a_bare_id_two_providers_offer_is_refused_by_name(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    second = {"base_url": llm.openai_base_url, "api_key": "k2"}
    engine = await make_engine(default_model="xiaomi/mimo-v2-flash", providers={"mirror": second})
    sentence = (
        "xiaomi/mimo-v2-flash is offered by several providers: openrouter/xiaomi/mimo-v2-flash, "
        "mirror/xiaomi/mimo-v2-flash. Pick one."
    )
    try:
        assert await ask(engine, "hi") == f"_{sentence}_"
        with pytest.raises(UnknownModelError, match="several providers"):
            await engine.catalog.canonical("xiaomi/mimo-v2-flash")
    finally:
        await engine.aclose()
    assert llm.chat_requests() == []


async def test_a_bare_id_when_the_listing_fails_says_so(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    llm.models_error = Script(status=401)
    engine = await make_engine(default_model="gpt-4o-mini")
    try:
        assert await ask(engine, "hi") == (
            "_Could not look up gpt-4o-mini, as the openrouter model list is unavailable: "
            "The openrouter API key was rejected; an admin needs to check it._"
        )
    finally:
        await engine.aclose()


async def test_unknown_and_unconfigured_names(engine: Engine) -> None:
    with pytest.raises(UnknownModelError, match=r"^Unknown model mimo-v2-flsh\. Did you mean"):
        await engine.catalog.resolve("mimo-v2-flsh")
    with pytest.raises(UnknownModelError, match="The anthropic provider is not configured"):
        await engine.catalog.resolve("anthropic/claude-sonnet-4-5")


async def test_each_answered_message_logs_one_line_without_its_text(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bot.reply"):
        await ask(engine, "a private thought")
        await ask(engine, "/help")  # a command is not a model reply
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "reply"]
    assert record.levelno == logging.INFO
    fields = record.fields  # type: ignore[attr-defined]
    assert fields.pop("latency_ms") >= 0
    assert fields == {
        "platform": "test",
        "conversation": "test:general",
        "model": "openrouter/xiaomi/mimo-v2-flash",
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "outcome": "ok",
    }
    assert "private thought" not in caplog.text
    assert record.getMessage().startswith(
        "reply platform=test conversation=test:general model=openrouter/xiaomi/mimo-v2-flash "
        "prompt_tokens=12 completion_tokens=3 latency_ms="
    )
