from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from bot.engine import Engine
from bot.models import RenderBudget
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


@pytest.fixture
async def engine(make_settings: Callable[..., Settings]) -> AsyncIterator[Engine]:
    engine = await Engine.create(make_settings())
    yield engine
    await engine.aclose()


class RecordingSurface:
    """Remembers every render, so tests can check order, growth and the final state."""

    def __init__(self, budget: RenderBudget | None = None) -> None:
        self.budget = budget or RenderBudget()
        self.started = 0
        self.renders: list[tuple[str, bool]] = []

    async def start(self) -> None:
        self.started += 1

    async def render(self, text: str, *, final: bool) -> int:
        self.renders.append((text, final))
        return 1

    @property
    def final(self) -> str:
        assert self.renders and self.renders[-1][1], f"no final render: {self.renders}"
        return self.renders[-1][0]
