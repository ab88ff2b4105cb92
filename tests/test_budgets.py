"""Budgets: a reply over one is refused in one sentence with nothing sent to the provider, one warning
at 80 %, a new period starts afresh, /budget sets them, and two replies racing at the edge cannot both
pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.access import Refused
from bot.budgets import Budgets, Reservation
from bot.engine import Engine
from bot.leader import Leader
from bot.models import Author
from bot.schema import budget_holds
from tests.support.asking import ADA, CHANNEL, answer, ask, msg, started
from tests.support.heartbeats import silence
from tests.support.llm_server import LLMServer, Script

BOB = Author("u-bob", "Bob")
BOSS = Author("u-boss", "Boss", is_channel_manager=True)
WARNED = "_Your daily budget is 85 % used (85 tokens of 100 tokens); it resets at 00:00 UTC on "


async def test_a_person_over_their_budget_is_refused_without_asking_the_provider(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(budgets={"person_daily_tokens": 100})
    llm.enqueue(
        Script(tokens=["one"], usage=(80, 5)),  # 85 tokens: past 80 % of the budget
        Script(tokens=["two"], usage=(1, 1)),
        Script(tokens=["three"], usage=(5, 5)),
        Script(tokens=["four"], usage=(5, 5)),
    )
    assert await ask(engine, "1") == "one"
    second = await ask(engine, "2")
    assert second.startswith("two\n\n" + WARNED)  # the one warning
    assert await ask(engine, "3") == "three"  # over 80 % still, but warned already
    assert await ask(engine, "4") == "four"  # 97 of 100 used: it may start, and goes over
    sent = len(llm.chat_requests())
    refused = await ask(engine, "5")
    assert refused.startswith("Your daily budget of 100 tokens is used up (107 tokens so far), ")
    assert refused.endswith("; a Parley admin (in parley.toml) can raise it.")
    assert "so Parley will not answer until it resets at 00:00 UTC on " in refused
    assert len(llm.chat_requests()) == sent  # nothing reached the provider
    # Someone else in the same channel is not held by Ada's budget.
    assert await ask(engine, "hello", author=BOB) == "echo: Bob: hello"
    # A new day: the budget starts afresh.
    engine.budgets = Budgets(engine.store, engine.settings.budgets, clock=lambda: time.time() + 86400)
    assert await ask(engine, "6") == "echo: Ada: 6"


async def test_a_usd_budget_counts_the_cost(make_engine: Callable[..., Any], llm: LLMServer) -> None:
    engine = await make_engine(budgets={"channel_monthly_usd": 0.01})
    llm.enqueue(Script(tokens=["dear"], cost=0.011))
    assert await ask(engine, "1") == "dear"
    refused = await ask(engine, "2", author=BOB)
    assert refused.startswith("This channel's monthly budget of $0.01 is used up ($0.01 so far)")
    assert refused.endswith("; a channel manager (with /budget) can raise it.")
    assert " on 1 " in refused  # a month resets on the first


async def test_two_replies_racing_at_the_edge_cannot_both_pass(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    # Each reply reserves its prompt and the 4,096 tokens kept for its answer: more than this budget.
    engine = await make_engine(budgets={"channel_daily_tokens": 4000})
    gate, task, _shown = await started(engine, llm, ["slow", " answer"], "first")  # Ada's reservation held
    refused = await ask(engine, "second", author=BOB)
    assert refused.startswith("This channel's daily budget of 4,000 tokens is used up (0 tokens so far)")
    assert len(llm.chat_requests()) == 1
    gate.release()
    assert await task == "ok"
    # Settled: 15 tokens spent, nothing held, so the next reply may start.
    assert await ask(engine, "third", author=BOB) == "echo: Bob: third"


async def test_managers_set_a_channels_budget_and_admins_the_servers(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(admin_user_ids="u-admin", budgets={"person_monthly_usd": 5})
    show = await run(engine, "budget")
    assert show.text.startswith(
        "Budgets that apply here (UTC days and months):\nYour monthly: $0.00 of $5.00"
    )
    assert show.text.endswith("(default)")
    refused = await run(engine, "budget channel daily tokens 10")
    assert refused.text == "Only channel managers and Parley admins can change this channel's budgets."
    done = await run(engine, "budget channel daily tokens 10", BOSS)
    assert (done.text, done.ephemeral) == ("This channel's daily tokens budget is now 10 tokens.", False)
    assert await ask(engine, "1") == "echo: Ada: 1"
    assert (await ask(engine, "2")).startswith("This channel's daily budget of 10 tokens is used up")
    assert "This channel's daily: 15 tokens of 10 tokens used" in (await run(engine, "budget")).text
    assert (await run(engine, "budget channel daily tokens off", BOSS)).text.endswith("is now off.")
    assert await ask(engine, "3") == "echo: Ada: 3"
    assert (await run(engine, "budget channel daily tokens default", BOSS)).text == (
        "This channel's daily tokens budget is back to the default."
    )
    # The server's budgets: Parley admins only, where there is a server.
    assert (await run(engine, "budget server monthly usd 20", BOSS)).text == (
        "Only Parley admins can change this server's budgets."
    )
    admin = Author("u-admin", "Admin")
    assert (await run(engine, "budget server monthly usd 20", admin)).text == (
        "This server's monthly usd budget is now $20.00."
    )
    assert (await run(engine, "budget server monthly usd 20", admin, server=None)).text == (
        "There is no server here; set a channel budget instead."
    )


async def test_bad_budget_commands_get_one_sentence(engine: Engine) -> None:
    assert (await run(engine, "budget")).text == "No budgets apply here."
    assert (await run(engine, "budget channel")).text.startswith("Usage: /budget shows the budgets here;")
    assert (await run(engine, "budget channel daily euros 5", BOSS)).text == (
        "A budget is in usd or tokens, not 'euros'."
    )
    assert (await run(engine, "budget channel daily usd lots", BOSS)).text == (
        "'lots' is not an amount; write a number such as 5 or 0.50, or off."
    )
    assert (await run(engine, "budget channel daily usd -1", BOSS)).text.startswith("'-1' is not an amount")
    assert (await run(engine, "budget channel daily usd nan", BOSS)).text.startswith("'nan' is not an amount")


async def test_a_refused_reply_is_answered_once_on_its_surface(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(budgets={"person_daily_tokens": 0})
    surface = await answer(engine, msg("hello"))
    assert surface.renders[-1][1] and surface.final.startswith("Your daily budget of 0 tokens is used up")
    assert llm.chat_requests() == []


async def run(engine: Engine, line: str, author: Author = ADA, server: str | None = "S1") -> Any:
    return await engine.run_command(msg("/" + line, CHANNEL, author, server_id=server), line)


on_postgres = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@on_postgres
async def test_instances_on_one_postgresql_hold_against_one_budget(make_engine: Callable[..., Any]) -> None:
    """Replies under way on two instances hold their estimates in the database: at most as many start as
    the budget has room for between them, whichever instance they reach, racing or not."""
    limits = {"person_daily_tokens": 100}
    one, two = await make_engine(budgets=limits), await make_engine(budgets=limits)
    attempts = await asyncio.gather(
        *(engine.budgets.reserve(msg(f"q{n}"), 0.0, 60) for n, engine in enumerate((one, two, one, two))),
        return_exceptions=True,
    )
    held = [a for a in attempts if isinstance(a, Reservation)]
    refused = [a for a in attempts if isinstance(a, Refused)]
    assert (len(held), len(refused)) == (2, 2)  # 0 and 60 held: room; 120 held: none
    assert str(refused[0]).startswith("Your daily budget of 100 tokens is used up (0 tokens so far)")
    for reservation in held:
        await (one if reservation is attempts[0] else two).budgets.settle(reservation)
    assert await holds(one) == 0
    assert isinstance(await two.budgets.reserve(msg("again"), 0.0, 60), Reservation)  # released: room again


@on_postgres
async def test_a_dead_instances_holds_stop_counting(make_engine: Callable[..., Any]) -> None:
    limits = {"person_daily_tokens": 100}
    dead, alive = await make_engine(budgets=limits), await make_engine(budgets=limits)
    for n in range(2):
        await dead.budgets.reserve(msg(f"q{n}"), 0.0, 60)
    with pytest.raises(Refused):
        await alive.budgets.reserve(msg("now"), 0.0, 60)
    await silence(dead, alive.settings.instance_timeout_seconds + 1)
    assert isinstance(await alive.budgets.reserve(msg("now"), 0.0, 60), Reservation)
    await Leader(alive).check()  # the leader's prune forgets them
    assert await holds(alive) == 1


async def holds(engine: Engine) -> int:
    """The replies holding against budgets (each holds a row per person, channel and server)."""
    query = select(func.count(func.distinct(budget_holds.c.reservation)))
    return await engine.store.read(lambda conn: int(conn.execute(query).scalar_one()))
