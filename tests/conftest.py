from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.engine import Engine
from bot.models import ConversationKey, HistoryEntry, RenderBudget
from bot.streaming import Clock
from skills import builtin
from tests.support import postgres
from tests.support.discord_emulator import DiscordEmulator, running
from tests.support.discord_harness import discord_settings_for, engine_on
from tests.support.llm_server import LLMServer
from tests.support.search_server import SearchServer
from tests.support.slack_api import SlackAPI
from tests.support.slack_harness import Harness, emulator, serving, settings_builder

RELEASE_PAGE = (
    "<html><body><article><p>Parley 2.0 ships streaming replies to Slack and Discord.</p>"
    "</article></body></html>"
)


@pytest.fixture
async def llm() -> AsyncIterator[LLMServer]:
    async with LLMServer() as server:
        yield server


@pytest.fixture
async def search() -> AsyncIterator[SearchServer]:
    """A loopback search backend with one result, for the platform tests of `/web`."""
    async with SearchServer() as server:
        server.pages["/release"] = RELEASE_PAGE
        server.results = [("Parley 2.0 | released", "/release", "Version 2.0 ships streaming replies")]
        yield server


# PostgreSQL for the tests: the server PARLEY_TEST_POSTGRES_URL names (CI starts one), else a cluster of
# this machine's PostgreSQL binaries started for the session. With PARLEY_TEST_POSTGRES_REQUIRED set
# (CI sets it), a missing PostgreSQL fails the tests instead of skipping them.
POSTGRES_URL_VARIABLE = "PARLEY_TEST_POSTGRES_URL"
POSTGRES_REQUIRED_VARIABLE = "PARLEY_TEST_POSTGRES_REQUIRED"
BOTH_DATABASES = "both_databases"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{BOTH_DATABASES}: run each test that uses a database on SQLite and on PostgreSQL"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker(BOTH_DATABASES) and "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str | None]:
    """The URL of a PostgreSQL server's maintenance database, or None when there is none to use."""
    named = os.environ.get(POSTGRES_URL_VARIABLE)
    if named:
        yield named
        return
    if postgres.binaries() is None:
        yield None
        return
    # Not under pytest's tmp_path: as root the cluster runs as another user, who must reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    try:
        yield postgres.start(folder)
    finally:
        postgres.stop(folder)


_databases = itertools.count(1)


async def fresh_postgres_database(server: str | None) -> str:
    """A new, empty database on the session's server: each test its own."""
    if server is None:
        reason = (
            "PostgreSQL is not installed here (no initdb on PATH or in /usr/lib/postgresql), "
            f"and {POSTGRES_URL_VARIABLE} names no server"
        )
        if os.environ.get(POSTGRES_REQUIRED_VARIABLE):
            pytest.fail(f"{reason}; {POSTGRES_REQUIRED_VARIABLE} is set, so PostgreSQL tests may not skip")
        pytest.skip(reason)
    return await postgres.create_database(server, f"test_{os.getpid()}_{next(_databases)}")


@pytest.fixture
async def database_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_server: str | None) -> str:
    """A fresh database for the test: SQLite unless the test is parametrized with "postgresql"."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return await fresh_postgres_database(postgres_server)
    return f"sqlite+aiosqlite:///{tmp_path}/parley.db"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder to run `parley` in; the subprocess imports this checkout, whatever directory it runs in."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    return tmp_path


@pytest.fixture
def make_settings(tmp_path: Path, llm: LLMServer, database_url: str) -> Callable[..., Settings]:
    """Settings for a test: the loopback provider as `openrouter`, a fresh database, no .env read."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "_env_file": None,
            "openrouter_api_key": "sk-test",
            "openrouter_base_url": llm.openai_base_url,
            "database_url": database_url,
            "default_model": "openrouter/xiaomi/mimo-v2-flash",
            "max_retries": 0,
        }
        values.update(overrides)
        return Settings(**values)

    return build


_surface_ids = itertools.count(1)


class RecordingSurface:
    """Remembers every render, so tests can check order, growth and the final state."""

    def __init__(self, budget: RenderBudget | None = None, reopened: Mapping[str, Any] | None = None) -> None:
        self.budget = budget or RenderBudget()
        self.id = int(reopened["surface"]) if reopened else next(_surface_ids)
        self.reopened = reopened is not None
        self.started = 0
        self.renders: list[tuple[str, bool]] = []

    async def start(self) -> None:
        self.started += 1

    async def render(self, text: str, *, final: bool) -> int:
        self.renders.append((text, final))
        return 1

    @property
    def refs(self) -> dict[str, Any] | None:
        return {"surface": self.id} if self.renders else None

    @property
    def final(self) -> str:
        assert self.renders and self.renders[-1][1], f"no final render: {self.renders}"
        return self.renders[-1][0]


class RecordingPlatform:
    """The platform port for engine tests: every reply gets a RecordingSurface; history is what the test
    puts in `channel_messages`."""

    name = "test"

    def __init__(self) -> None:
        self.surfaces: list[tuple[ConversationKey, Mapping[str, Any] | None, RecordingSurface]] = []
        self.channel_messages: dict[ConversationKey, list[HistoryEntry]] = {}
        self.channels: set[str] = {"general", "digest", "announcements"}  # what `#name` can name
        self.read_only: set[str] = {"announcements"}  # channels Parley may not post in

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def wait_closed(self) -> None:
        await asyncio.Event().wait()

    async def surface_for(
        self, conversation: ConversationKey, reply_to: Mapping[str, Any] | None = None
    ) -> RecordingSurface:
        surface = RecordingSurface()
        self.surfaces.append((conversation, reply_to, surface))
        return surface

    async def reopen(self, conversation: ConversationKey, refs: Mapping[str, Any]) -> RecordingSurface:
        surface = RecordingSurface(reopened=refs)
        self.surfaces.append((conversation, None, surface))
        return surface

    async def history(
        self,
        conversation: ConversationKey,
        *,
        limit: int,
        before: str | None = None,
        after: str | None = None,
    ) -> list[HistoryEntry]:
        """As the platforms page: the newest `limit` (before `before`), or the first after `after`."""
        here = self.channel_messages.get(conversation, [])
        ids = [entry.id for entry in here]
        if after is not None:
            here = here[ids.index(after) + 1 :]
            return here[:limit]
        if before is not None:
            here = here[: ids.index(before)]
        return here[-limit:]

    async def permalink(self, conversation: ConversationKey, message_id: str) -> str:
        return f"https://chat.example/{conversation}/{message_id}"

    async def resolve_channel(self, near: ConversationKey, typed: str) -> ConversationKey | None:
        """`#name` for a channel in `channels`."""
        name = typed.removeprefix("#")
        return ConversationKey(self.name, name) if typed.startswith("#") and name in self.channels else None

    async def may_post(self, conversation: ConversationKey) -> bool:
        return conversation.channel_id not in self.read_only


@pytest.fixture
def platform() -> RecordingPlatform:
    return RecordingPlatform()


@pytest.fixture
async def make_engine(
    make_settings: Callable[..., Settings], platform: RecordingPlatform
) -> AsyncIterator[Callable[..., Any]]:
    """Engines with the built-in skills and the recording platform; closed at the end of the test."""
    made: list[Engine] = []

    async def build(*, clock: Clock | None = None, **overrides: Any) -> Engine:
        settings = make_settings(**overrides)
        engine = await Engine.create(settings, skills=builtin(settings), clock=clock)
        engine.register(platform)
        made.append(engine)
        return engine

    yield build
    for engine in made:
        await engine.aclose()


@pytest.fixture
async def engine(make_engine: Callable[..., Any]) -> Engine:
    return await make_engine()


# Slack: the loopback workspace, settings that point at it, Parley serving it (support/slack_harness.py).
@pytest.fixture
async def slack() -> AsyncIterator[SlackAPI]:
    async with emulator() as api:
        yield api


@pytest.fixture
def slack_settings(
    make_settings: Callable[..., Settings], slack: SlackAPI, search: SearchServer
) -> Callable[..., Settings]:
    return settings_builder(make_settings, slack, search)


@pytest.fixture
async def harness(
    slack: SlackAPI, llm: LLMServer, slack_settings: Callable[..., Settings]
) -> AsyncIterator[Harness]:
    async with serving(slack, llm, slack_settings()) as started:
        yield started


# Discord: the loopback Discord, settings that point at it, an engine on them, and that engine connected
# as `parley run` connects it (support/discord_harness.py, support/discord_emulator.py).
@pytest.fixture
async def discord_api() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        yield emulator


@pytest.fixture
def discord_settings(make_settings: Callable[..., Settings], discord_api: DiscordEmulator) -> Settings:
    return discord_settings_for(make_settings, discord_api)


@pytest.fixture
async def discord_engine(discord_settings: Settings) -> AsyncIterator[Engine]:
    """An engine with the built-in skills on `discord_settings`, not yet connected; closed at the end."""
    async with engine_on(discord_settings, builtin(discord_settings)) as engine:
        yield engine


@pytest.fixture
async def discord_bot(discord_api: DiscordEmulator, discord_engine: Engine) -> AsyncIterator[Engine]:
    """`discord_engine` connected to the loopback Discord for the whole test."""
    async with running(discord_api, discord_engine):
        yield discord_engine
