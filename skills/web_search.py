"""Web search: results from the configured backend, cached briefly, with the top pages' text read safely."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any, ClassVar

import httpx

from bot.config import Settings
from bot.skills import Citations, Question, SkillContext, SkillResult, Source
from bot.untrusted import clean, results_block
from skills.page_reader import FetchRefused, read_page
from skills.search_backends import SearchBackend, SearchError, backend_for

log = logging.getLogger(__name__)

QUERY_CHARS = 200
MAX_CACHED = 256  # searches kept; each holds a few pages of text
# Words that make a question about the present, where a model's training data is likely stale.
TIME_SENSITIVE = re.compile(
    r"\b(today|tonight|tomorrow|yesterday|now|currently|current|latest|newest|recent|recently"
    r"|this (week|month|year)|news|price|prices|stock|weather|forecast|score|scores|release|released"
    r"|who won|election|20[2-9]\d)\b",
    re.IGNORECASE,
)
FOLLOW_UP = re.compile(r"\b(it|its|that|this|they|them|those|these|he|she|there)\b", re.IGNORECASE)


class WebSearch:
    """The web-search skill. One per engine: it owns the HTTP client and the query cache."""

    name = "web_search"
    summary = "searches the web and answers with cited sources"
    description = (
        "Search the web for current information. Use for recent events, prices, releases, facts you are "
        "unsure of, or anything after your training data."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "What to search for"}},
        "required": ["query"],
    }
    default_mode = "off"
    command = "web QUERY"

    def __init__(
        self,
        settings: Settings,
        *,
        backend: SearchBackend | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._client = httpx.AsyncClient(follow_redirects=False)
        self._backend = backend
        self._clock = clock
        self._cache: dict[str, tuple[float, tuple[Source, ...], dict[str, str]]] = {}
        self.searches = 0  # backend calls made, cache hits excluded

    async def aclose(self) -> None:
        await self._client.aclose()

    def prefetch(self, question: Question) -> list[dict[str, Any]]:
        """Mode on: every question. Auto, for a model without tools: questions that sound time-sensitive."""
        if question.mode == "on" or looks_time_sensitive(question.text):
            return [{"query": search_query(list(question.recent))}]
        return []

    def arguments_for(self, text: str) -> dict[str, Any]:
        return {"query": text}

    async def run(self, arguments: dict[str, Any], context: SkillContext) -> SkillResult:
        return await self.search(str(arguments.get("query") or ""), context.citations)

    async def search(self, query: str, citations: Citations | None = None) -> SkillResult:
        """Results as an untrusted-data block for the model, plus the sources the bot may cite.

        A failing backend gives an empty result with a note, never an exception: the answer goes on
        without search.
        """
        query = " ".join(clean(query).split())[:QUERY_CHARS]
        if not query:
            return SkillResult(
                "No search was made: the query was empty.", note="Web search had nothing to search for."
            )
        cached = self._cache.get(query.lower())
        searched = None  # the backend asked, for the usage; a cached answer asked none
        if cached and self._clock() - cached[0] < self._settings.search_cache_seconds:
            sources, pages = cached[1], cached[2]
        else:
            searched = self._settings.search_backend
            try:
                backend = self._backend or backend_for(self._settings, self._client)
                self.searches += 1
                sources = tuple(await backend(query, self._settings.search_results))
            except SearchError as error:
                return SkillResult(
                    f"Web search failed: {error}",
                    note=f"Web search failed, so this answer is without it: {error}",
                    searched=searched,
                )
            pages = await self._read_pages(sources[: self._settings.search_pages_read])
            self._remember(query.lower(), sources, pages)
        if not sources:
            return SkillResult(
                f"Web search for {query!r} found nothing.",
                note=f"Web search found nothing for {query!r}.",
                searched=searched,
            )
        first = (citations or Citations()).add(sources)
        return SkillResult(results_block(sources, pages, first), sources, searched=searched)

    def _remember(self, key: str, sources: tuple[Source, ...], pages: dict[str, str]) -> None:
        """Cache a search, dropping expired entries so a long-running bot does not grow without end."""
        now = self._clock()
        ttl = self._settings.search_cache_seconds
        self._cache = {k: v for k, v in self._cache.items() if now - v[0] < ttl}
        while len(self._cache) >= MAX_CACHED:
            del self._cache[next(iter(self._cache))]  # the oldest: dicts keep insertion order
        self._cache[key] = (now, sources, pages)

    async def _read_pages(self, sources: tuple[Source, ...]) -> dict[str, str]:
        allow_private = self._settings.fetch_allow_private

        async def read(source: Source) -> tuple[str, str]:
            try:
                return source.url, await read_page(
                    source.url, allow_private=allow_private, client=self._client
                )
            except FetchRefused as refusal:
                log.info("not reading %s: %s", source.url, refusal)
                return source.url, ""

        return {url: text for url, text in await asyncio.gather(*(read(s) for s in sources)) if text}


def search_query(texts: list[str]) -> str:
    """A query from the newest user message, with the one before it when the newest leans on it.

    Falls back to the user's own words: never an empty query while the user said something.
    """
    texts = [" ".join(clean(t).split()) for t in texts if t and t.strip()]
    if not texts:
        return ""
    latest = texts[-1]
    if len(texts) > 1 and (len(latest.split()) < 4 or FOLLOW_UP.search(latest)):
        latest = f"{texts[-2]} {latest}"
    return latest[-QUERY_CHARS:].strip()


def looks_time_sensitive(text: str) -> bool:
    return bool(TIME_SENSITIVE.search(text))
