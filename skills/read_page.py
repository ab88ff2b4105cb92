"""Reading a page: a link someone posted, or one the model asks for, through the SSRF-guarded reader."""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from bot.config import Settings
from bot.skills import Question, SkillContext, SkillResult, Source
from bot.untrusted import results_block
from skills.page_reader import FetchRefused, read_page

# A link as people paste it: up to whitespace or the brackets and quotes that often wrap it.
LINK = re.compile(r"https?://[^\s<>()\[\]{}\"'`|]+")
POSTED_LINKS_READ = 2  # links of one message read before the model answers


class ReadPage:
    name = "read_page"
    summary = "reads the web pages people link to, and cites them"
    description = (
        "Read the readable text of a web page by its URL (http or https). Use when someone shares a link "
        "or asks about a specific page."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"url": {"type": "string", "description": "The page's full http(s) URL"}},
        "required": ["url"],
    }
    default_mode = "auto"
    command = "read URL"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = httpx.AsyncClient(follow_redirects=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    def prefetch(self, question: Question) -> list[dict[str, Any]]:
        """The links in the message being answered (for a model without tools, or in mode on)."""
        links = list(dict.fromkeys(match.rstrip(".,;:!?") for match in LINK.findall(question.text)))
        return [{"url": link} for link in links[:POSTED_LINKS_READ]]

    def arguments_for(self, text: str) -> dict[str, Any]:
        return {"url": text.split()[0] if text.split() else ""}

    async def run(self, arguments: dict[str, Any], context: SkillContext) -> SkillResult:
        url = str(arguments.get("url") or "").strip()
        if not url:
            return SkillResult("No page was read: no URL was given.")
        try:
            text = await read_page(url, allow_private=self._settings.fetch_allow_private, client=self._client)
        except FetchRefused as refusal:
            return SkillResult(
                f"The page {url} was not read: {refusal}.", note=f"{url} was not read: {refusal}."
            )
        if not text:
            return SkillResult(f"The page {url} has no readable text.", note=f"{url} has no readable text.")
        source = Source(_title(url), url)
        first = context.citations.add([source])
        return SkillResult(results_block((source,), {url: text}, first), (source,))


def _title(url: str) -> str:
    """A readable name for the citation: the host and path, without the scheme."""
    parts = urlsplit(url)
    return f"{parts.hostname or ''}{parts.path}".rstrip("/") or url
