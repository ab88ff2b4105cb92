"""Where search results come from: DuckDuckGo (no key), a SearXNG instance, or Brave's API."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from bot.config import Settings
from bot.skills import Source

log = logging.getLogger(__name__)

SearchBackend = Callable[[str, int], Awaitable[list[Source]]]
_TAGS = re.compile(r"<[^>]+>")
SEARCH_SECONDS = 10.0
BRAVE_MAX_COUNT = 20  # the API refuses more per request
NO_DDGS_RESULTS = "No results found."


class SearchError(Exception):
    """The search backend failed; the message is a short sentence for the user."""


def backend_for(settings: Settings, client: httpx.AsyncClient) -> SearchBackend:
    if settings.search_backend == "searxng":
        if not settings.searxng_url:
            raise SearchError("Web search is set to SearXNG but SEARXNG_URL is not set.")
        return _searxng(client, settings.searxng_url)
    if settings.search_backend == "brave":
        if not settings.brave_api_key:
            raise SearchError("Web search is set to Brave but BRAVE_API_KEY is not set.")
        return _brave(client, settings.brave_api_url, settings.brave_api_key.get_secret_value())
    return duckduckgo


async def duckduckgo(query: str, count: int) -> list[Source]:
    from ddgs import DDGS  # imported when used: it pulls in a sizeable HTTP stack
    from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

    def search() -> list[dict[str, Any]]:
        try:
            return list(DDGS().text(query, max_results=count) or [])
        except DDGSException as error:
            if str(error) == NO_DDGS_RESULTS:  # ddgs raises, rather than returning [], when nothing matched
                return []
            raise

    try:
        results = await asyncio.to_thread(search)  # ddgs is synchronous; keep the event loop free
    except RatelimitException:
        raise SearchError("DuckDuckGo is rate-limiting searches right now.") from None
    except TimeoutException:
        raise SearchError("DuckDuckGo search took too long.") from None
    except Exception as error:
        log.warning("DuckDuckGo search failed: %s", type(error).__name__)
        raise SearchError("DuckDuckGo search did not answer.") from None
    return _sources(results, "href", "body", count)


def _searxng(client: httpx.AsyncClient, base_url: str) -> SearchBackend:
    async def search(query: str, count: int) -> list[Source]:
        data = await _get_json(
            client, f"{base_url.rstrip('/')}/search", {"q": query, "format": "json"}, {}, "SearXNG"
        )
        return _sources(_results(data.get("results"), "SearXNG"), "url", "content", count)

    return search


def _brave(client: httpx.AsyncClient, url: str, key: str) -> SearchBackend:
    async def search(query: str, count: int) -> list[Source]:
        headers = {"X-Subscription-Token": key, "Accept": "application/json"}
        params = {"q": query, "count": str(min(count, BRAVE_MAX_COUNT))}
        data = await _get_json(client, url, params, headers, "Brave")
        web = data.get("web") or {}
        return _sources(
            _results(web.get("results") if isinstance(web, dict) else web, "Brave"),
            "url",
            "description",
            count,
        )

    return search


async def _get_json(
    client: httpx.AsyncClient, url: str, params: dict[str, str], headers: dict[str, str], name: str
) -> dict[str, Any]:
    try:
        response = await client.get(url, params=params, headers=headers, timeout=SEARCH_SECONDS)
    except httpx.HTTPError as error:
        log.warning("%s search failed: %s", name, type(error).__name__)
        raise SearchError(f"{name} search could not be reached.") from None
    if response.status_code >= 400:
        log.warning("%s search answered %s", name, response.status_code)
        raise SearchError(_status_message(name, response.status_code))
    try:
        data = response.json()
    except ValueError:
        raise SearchError(f"{name} search sent something that is not JSON.") from None
    if not isinstance(data, dict):
        raise SearchError(f"{name} search sent an unexpected answer.")
    return data


def _status_message(name: str, status: int) -> str:
    if status == 429:
        return f"{name} is rate-limiting searches right now."
    if name == "Brave" and status in (401, 403, 422):
        return f"Brave rejected the search (HTTP {status}); an admin needs to check BRAVE_API_KEY."
    if name == "SearXNG" and status == 403:
        return "SearXNG refused JSON results (HTTP 403); an admin needs to enable json in its search formats."
    return f"{name} search failed (HTTP {status})."


def _results(value: object, name: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SearchError(f"{name} search sent an unexpected answer.")
    return [item for item in value if isinstance(item, dict)]


def _sources(results: list[dict[str, Any]], url_key: str, snippet_key: str, count: int) -> list[Source]:
    """Sources with web links only: a result pointing at javascript: or a file is no source to cite."""
    sources = []
    for result in results:
        url = str(result.get(url_key) or "").strip()
        if _is_web_link(url):
            sources.append(Source(_text(result.get("title")), url, _text(result.get(snippet_key))))
    return sources[:count]


def _is_web_link(url: str) -> bool:
    try:
        return urlsplit(url).scheme in ("http", "https")
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


def _text(value: object) -> str:
    """Plain text from a result field: tags like Brave's <strong> removed, entities decoded."""
    return html.unescape(_TAGS.sub("", str(value or ""))).strip()
