"""Where search results come from: DuckDuckGo (no key), a SearXNG instance, or Brave's API."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bot.config import Settings
from skills.base import Source

log = logging.getLogger(__name__)

SearchBackend = Callable[[str, int], Awaitable[list[Source]]]
_TAGS = re.compile(r"<[^>]+>")


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

    def search() -> list[dict[str, Any]]:
        return list(DDGS().text(query, max_results=count) or [])

    try:
        results = await asyncio.to_thread(search)  # ddgs is synchronous; keep the event loop free
    except Exception as error:
        log.warning("DuckDuckGo search failed: %s", type(error).__name__)
        raise SearchError("DuckDuckGo search did not answer.") from None
    return [
        Source(_text(r.get("title")), str(r.get("href") or ""), _text(r.get("body")))
        for r in results
        if r.get("href")
    ][:count]


def _searxng(client: httpx.AsyncClient, base_url: str) -> SearchBackend:
    async def search(query: str, count: int) -> list[Source]:
        data = await _get_json(
            client, f"{base_url.rstrip('/')}/search", {"q": query, "format": "json"}, {}, "SearXNG"
        )
        results = data.get("results") or []
        return [
            Source(_text(r.get("title")), str(r["url"]), _text(r.get("content")))
            for r in results
            if isinstance(r, dict) and r.get("url")
        ][:count]

    return search


def _brave(client: httpx.AsyncClient, url: str, key: str) -> SearchBackend:
    async def search(query: str, count: int) -> list[Source]:
        headers = {"X-Subscription-Token": key, "Accept": "application/json"}
        data = await _get_json(client, url, {"q": query, "count": str(count)}, headers, "Brave")
        results = (data.get("web") or {}).get("results") or []
        return [
            Source(_text(r.get("title")), str(r["url"]), _text(r.get("description")))
            for r in results
            if isinstance(r, dict) and r.get("url")
        ][:count]

    return search


async def _get_json(
    client: httpx.AsyncClient, url: str, params: dict[str, str], headers: dict[str, str], name: str
) -> dict[str, Any]:
    try:
        response = await client.get(url, params=params, headers=headers, timeout=10.0)
    except httpx.HTTPError as error:
        log.warning("%s search failed: %s", name, type(error).__name__)
        raise SearchError(f"{name} search could not be reached.") from None
    if response.status_code >= 400:
        log.warning("%s search answered %s", name, response.status_code)
        raise SearchError(f"{name} search failed (HTTP {response.status_code}).")
    try:
        data = response.json()
    except ValueError:
        raise SearchError(f"{name} search sent something that is not JSON.") from None
    if not isinstance(data, dict):
        raise SearchError(f"{name} search sent an unexpected answer.")
    return data


def _text(value: object) -> str:
    """Plain text from a result field: tags like Brave's <strong> removed, entities decoded."""
    return html.unescape(_TAGS.sub("", str(value or ""))).strip()
