from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.engine import Engine
from bot.models import ConversationKey, HistoryEntry, RenderBudget
from bot.streaming import Clock
from skills import builtin
from tests.support.llm_server import LLMServer
from tests.support.search_server import SearchServer

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


@pytest.fixture
def make_settings(tmp_path: Path, llm: LLMServer) -> Callable[..., Settings]:
    """Settings for a test: the loopback provider as `openrouter`, a fresh SQLite file, no .env read."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "_env_file": None,
            "openrouter_api_key": "sk-test",
            "openrouter_base_url": llm.openai_base_url,
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/parley.db",
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
