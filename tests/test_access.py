"""Who may use Parley (`[access]`), /access, and RATE_LIMIT_PER_MINUTE, decided once in the core."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bot.access import NOT_ALLOWED, NOT_HERE
from bot.engine import Engine
from bot.models import Author, ConversationKey
from tests.support.asking import ADA, CHANNEL, ask, msg
from tests.support.llm_server import LLMServer

BOB = Author("u-bob", "Bob", role_ids=("r-staff",))
EVE = Author("u-eve", "Eve", role_ids=("r-guest",))
ADMIN = Author("u-admin", "Admin")
OTHER = ConversationKey("test", "random")


def refusal(engine: Engine, author: Author, key: ConversationKey = CHANNEL, server: str | None = "S1") -> Any:
    return engine.access.refusal(key, author, server)


@pytest.mark.parametrize(
    ("lists", "allowed", "refused"),
    [
        ({"deny_users": ["u-eve"]}, [ADA, BOB], [(EVE, NOT_ALLOWED)]),
        ({"allow_users": ["u-ada"]}, [ADA], [(BOB, NOT_ALLOWED), (EVE, NOT_ALLOWED)]),
        ({"allow_roles": ["r-staff"]}, [BOB], [(ADA, NOT_ALLOWED), (EVE, NOT_ALLOWED)]),
        ({"allow_roles": ["r-staff"], "allow_users": ["u-ada"]}, [ADA, BOB], [(EVE, NOT_ALLOWED)]),
        ({"deny_roles": ["r-guest"]}, [ADA, BOB], [(EVE, NOT_ALLOWED)]),
        ({"allow_users": ["u-eve"], "deny_roles": ["r-guest"]}, [], [(EVE, NOT_ALLOWED)]),  # deny wins
        ({"deny_channels": ["general"]}, [], [(ADA, NOT_HERE)]),
        ({"allow_channels": ["random"]}, [], [(ADA, NOT_HERE)]),
        ({"allow_servers": ["S2"]}, [], [(ADA, NOT_HERE)]),
        ({"deny_servers": ["S1"]}, [], [(BOB, NOT_HERE)]),
    ],
)
async def test_access_lists(
    make_engine: Callable[..., Any], lists: dict[str, Any], allowed: list[Author], refused: list[Any]
) -> None:
    engine = await make_engine(access=lists)
    assert [refusal(engine, author) for author in allowed] == [None] * len(allowed)
    assert [refusal(engine, author) for author, _ in refused] == [sentence for _, sentence in refused]


async def test_a_schedules_run_passes_the_person_lists_but_not_the_channel_lists(
    make_engine: Callable[..., Any],
) -> None:
    engine = await make_engine(access={"allow_users": ["u-ada"], "deny_channels": ["random"]})
    run = Author("schedule:3", "Ada's schedule 3")
    assert refusal(engine, run) is None
    assert refusal(engine, run, OTHER) == NOT_HERE
    assert refusal(engine, Author("u-schedule", "Not a schedule")) == NOT_ALLOWED


async def test_a_refused_message_is_never_stored_or_sent_and_its_commands_are_refused(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(access={"deny_users": ["u-ada"]})
    message = msg("hello")
    assert await engine.accept(message, {"message": message.id}) is None
    assert await engine.store.history(str(CHANNEL), 10) == []
    assert llm.chat_requests() == []
    result = await engine.run_command(msg("/model"), "model")
    assert (result.text, result.ephemeral) == (NOT_ALLOWED, True)
    assert await ask(engine, "hi", author=BOB) == "echo: Bob: hi"


async def test_the_terminal_and_parley_admins_are_never_refused(make_engine: Callable[..., Any]) -> None:
    engine = await make_engine(
        admin_user_ids="u-admin", access={"allow_users": ["u-ada"], "allow_channels": ["general"]}
    )
    terminal = Author("terminal", "me", is_channel_manager=True)
    assert engine.access.refusal(ConversationKey("console", "default"), terminal) is None
    assert refusal(engine, ADMIN, OTHER) is None
    assert refusal(engine, BOB, OTHER) == NOT_ALLOWED


async def test_access_shows_the_lists_to_admins_only(make_engine: Callable[..., Any]) -> None:
    engine = await make_engine(
        admin_user_ids="u-admin",
        access={"allow_roles": ["r-staff"], "deny_users": ["u-eve"]},
        rate_limit_per_minute=5,
    )
    refused = await engine.run_command(msg("/access", author=BOB), "access")
    assert refused.text == "Only Parley admins can see who may use Parley."
    shown = (await engine.run_command(msg("/access", author=ADMIN), "access")).text.splitlines()
    assert shown[0] == "Who may use Parley (from [access] in parley.toml):"
    assert "allowed roles: r-staff" in shown and "denied users: u-eve" in shown
    assert "allowed users: (none)" in shown and shown[-1] == "Rate limit: 5 per person per minute."
    open_engine = await make_engine()
    everyone = (await open_engine.run_command(msg("/access", key=OTHER), "access")).text
    assert everyone == "Only Parley admins can see who may use Parley."


async def test_a_person_over_the_rate_limit_gets_one_sentence_and_no_provider_request(
    make_engine: Callable[..., Any], llm: LLMServer
) -> None:
    engine = await make_engine(rate_limit_per_minute=2)
    assert await ask(engine, "1") == "echo: Ada: 1"
    assert await ask(engine, "2") == "echo: Ada: 2"
    refused = await ask(engine, "3")
    assert refused.startswith(
        "You have asked Parley 2 times in the last minute, the most allowed; try again in "
    )
    assert refused.endswith(" seconds.")
    assert len(llm.chat_requests()) == 2
    assert await ask(engine, "4", author=BOB) == "echo: Bob: 4"  # per person
