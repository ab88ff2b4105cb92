"""What each reply spent: tokens of every kind, the model that spent them, who asked, and the cost, from
the provider's figure, the catalog's prices or parley.toml's, over tool rounds, fallbacks and failed
attempts; searches by backend. Through the real provider code against the loopback LLM server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bot.engine import Engine
from tests.support.asking import CHANNEL, ask, msg
from tests.support.llm_server import LLMServer, Script
from tests.support.search_server import SearchServer

MIMO = "openrouter/xiaomi/mimo-v2-flash"
MINI = "openrouter/openai/gpt-4o-mini"  # the loopback listing prices it: $0.15 and $0.60 per M tokens
MIMO_PRICES = {"openrouter": {"prices": {"xiaomi/mimo-v2-flash": {"prompt": 1.0, "completion": 2.0}}}}


async def by_model(engine: Engine) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in await engine.store.usage_report("model", "name", 0)}


async def test_the_providers_own_cost_and_every_kind_of_token_are_recorded_with_who_asked(
    engine: Engine, llm: LLMServer
) -> None:
    llm.enqueue(Script(tokens=["Hi"], usage=(120, 30), cost=0.0042, reasoning_tokens=10, cached_tokens=100))
    await ask(engine, "hello")
    row = (await by_model(engine))[MIMO]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (120, 30)
    assert (row["reasoning_tokens"], row["cached_tokens"]) == (10, 100)
    assert row["cost"] == pytest.approx(0.0042)
    assert (row["calls"], row["replies"]) == (1, 1)
    (person,) = await engine.store.usage_report("model", "person", 0)
    assert (person["key"], person["person_name"]) == ("test:u-ada", "Ada")


async def test_without_a_provider_figure_the_catalog_prices_the_reply(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(default_model=MINI)
    await ask(engine, "hello")  # the loopback reports 12 prompt and 3 completion tokens
    assert (await by_model(engine))[MINI]["cost"] == pytest.approx(12 * 0.15e-6 + 3 * 0.6e-6)


async def test_without_catalog_prices_parley_toml_prices_the_reply(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(providers=MIMO_PRICES)
    await ask(engine, "hello")
    assert (await by_model(engine))[MIMO]["cost"] == pytest.approx(12 * 1e-6 + 3 * 2e-6)


async def test_a_model_nobody_prices_has_its_tokens_but_no_cost(engine: Engine, llm: LLMServer) -> None:
    await ask(engine, "hello")
    row = (await by_model(engine))[MIMO]
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost"]) == (12, 3, None)
    assert "cost unknown" in (await engine.run_command(msg("/usage"), "usage")).text


async def test_a_tool_using_reply_sums_every_round_and_counts_its_search_by_backend(
    make_engine: Callable[..., Any], llm: LLMServer, search: SearchServer
) -> None:
    engine = await make_engine(providers=MIMO_PRICES, **search.settings())
    await engine.store.set_skill_mode(str(CHANNEL), "web_search", "auto", "u-admin")
    llm.enqueue(
        Script(tokens=[], tool_calls=[("web_search", '{"query": "parley release"}')], usage=(50, 5)),
        Script(tokens=["Parley 2.0 is out [1]."], usage=(200, 20)),
    )
    assert (await ask(engine, "what is new in parley?")).startswith("Parley 2.0 is out")
    row = (await by_model(engine))[MIMO]
    assert (row["calls"], row["prompt_tokens"], row["completion_tokens"]) == (2, 250, 25)
    assert row["cost"] == pytest.approx(250 * 1e-6 + 25 * 2e-6)
    (searched,) = await engine.store.usage_report("search", "name", 0)
    assert (searched["key"], searched["calls"]) == ("searxng", 1)


async def test_a_fallback_reply_is_priced_by_the_model_that_answered(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(fallbacks={MIMO: [MINI]})
    llm.enqueue(Script(status=500), Script(tokens=["From the fallback."]))
    assert await ask(engine, "hello") == "From the fallback."
    spent = await by_model(engine)
    assert list(spent) == [MINI]  # the failed call reported no usage
    assert spent[MINI]["cost"] == pytest.approx(12 * 0.15e-6 + 3 * 0.6e-6)


async def test_a_failed_attempt_that_consumed_tokens_is_counted_for_its_own_model(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(providers=MIMO_PRICES, fallbacks={MIMO: [MINI]})
    thinking = b'data: {"choices":[{"index":0,"delta":{"reasoning":"Let me see"},"finish_reason":null}]}\n\n'
    used = b'data: {"choices":[],"usage":{"prompt_tokens":40,"completion_tokens":7}}\n\n'
    died = b'data: {"error":{"code":502,"message":"upstream died"}}\n\n'
    llm.enqueue(Script(raw=[thinking, used, died]), Script(tokens=["Fallback here."]))
    assert await ask(engine, "hello") == "Fallback here."
    spent = await by_model(engine)
    assert (spent[MIMO]["prompt_tokens"], spent[MIMO]["completion_tokens"]) == (40, 7)
    assert spent[MIMO]["cost"] == pytest.approx(40 * 1e-6 + 7 * 2e-6)
    assert (spent[MINI]["prompt_tokens"], spent[MINI]["completion_tokens"]) == (12, 3)


async def test_a_reply_that_failed_after_spending_still_counts(engine: Engine, llm: LLMServer) -> None:
    used = b'data: {"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":2}}\n\n'
    died = b'data: {"error":{"code":502,"message":"upstream died"}}\n\n'
    llm.enqueue(Script(raw=[used, died]))
    assert await ask(engine, "hello") == "_openrouter is unavailable right now; try again shortly._"
    row = (await by_model(engine))[MIMO]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (30, 2)


async def test_anthropic_lists_no_prices_so_parley_toml_prices_it_with_its_cached_tokens(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(
        anthropic_api_key="sk-ant-test",
        anthropic_base_url=llm.anthropic_base_url,
        default_model="anthropic/claude-sonnet-4-5",
        providers={"anthropic": {"prices": {"claude-sonnet-4-5": {"prompt": 3.0, "completion": 15.0}}}},
    )
    llm.enqueue(Script(tokens=["Cached."], usage=(1000, 10), cached_tokens=800))
    assert await ask(engine, "hello") == "Cached."
    row = (await by_model(engine))["anthropic/claude-sonnet-4-5"]
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (1000, 800, 10)
    assert row["cost"] == pytest.approx(1000 * 3e-6 + 10 * 15e-6)
    # A call Anthropic failed after counting the prompt is still counted.
    llm.enqueue(Script(tokens=["never"], usage=(500, 0), error_after=0))
    assert await ask(engine, "again") == "_anthropic is unavailable right now; try again shortly._"
    row = (await by_model(engine))["anthropic/claude-sonnet-4-5"]
    assert row["prompt_tokens"] == 1500
