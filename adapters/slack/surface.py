"""One Slack reply: a status while waiting, Slack's native text stream, and chat.update pages as fallback.

The engine paces renders from `budget`; this class only turns each render into the fewest Web API calls.
`render` returns the calls the budget covers: stream methods on the stream path, chat.update on the
message path (chat.postMessage is limited per channel, separately).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.errors import error_code
from adapters.slack.mrkdwn import (
    cut_point,
    neutralize,
    page_markdown,
    plain_destinations,
    stable_length,
    to_mrkdwn,
)
from bot.models import RenderBudget

log = logging.getLogger(__name__)

# chat.update answers msg_too_long near 4,000 characters: each page stays under this.
PAGE_LIMIT = 3800
STATUS = "is thinking…"
STREAM_CAPACITY = 90  # chat.appendStream is Tier 4 (100+ per minute per workspace)
UPDATE_CAPACITY = 45  # chat.update is Tier 3 (about 50 per minute per workspace)
# Stream errors that hold for the whole workspace (not one channel or one message): later replies there
# start on the message path at once, with its budget.
WORKSPACE_STREAM_ERRORS = {"not_allowed_token_type", "unknown_method", "missing_scope", "feature_not_enabled"}


@dataclass(slots=True)
class _Page:
    start: int  # offset in the reply text where this message's part begins
    ts: str | None = None
    shown: str = ""


class SlackSurface:
    """Streams into `thread_ts` when there is one; a top-level reply (a DM) uses the message path."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        thread_ts: str | None,
        team_id: str,
        user_id: str,
        min_interval: float = 1.0,
        streamless_teams: set[str] | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._team_id = team_id
        self._user_id = user_id
        self._min_interval = min_interval
        self._stream: AsyncChatStream | None = None
        self._streamless_teams = streamless_teams if streamless_teams is not None else set()
        self._streaming = thread_ts is not None and team_id not in self._streamless_teams
        self._sent = ""  # neutralized text the stream has carried so far
        self._pages: list[_Page] = []

    @property
    def budget(self) -> RenderBudget:
        if self._streaming:
            return RenderBudget(self._min_interval, f"slack-stream:{self._team_id}", STREAM_CAPACITY, 60.0)
        return RenderBudget(self._min_interval, f"slack:{self._team_id}", UPDATE_CAPACITY, 60.0)

    @property
    def message_ts(self) -> list[str]:
        """Every message this reply occupies, first to last."""
        if self._pages:
            return [page.ts for page in self._pages if page.ts]
        return [self._stream.ts] if self._stream and self._stream.ts else []

    async def start(self) -> None:
        if self._thread_ts is None:
            return
        try:
            await self._client.assistant_threads_setStatus(
                channel_id=self._channel, thread_ts=self._thread_ts, status=STATUS
            )
        except Exception as error:  # a workspace or channel without assistant status: no indicator
            log.debug("no thinking status in %s: %s", self._channel, error)

    async def render(self, text: str, *, final: bool) -> int:
        shown = neutralize(text if final else text[: stable_length(text)])
        if self._streaming:
            calls, done = await self._render_stream(plain_destinations(shown), final)
            if done:
                return calls
            return calls + await self._render_pages(shown, final)
        return await self._render_pages(shown, final)

    async def _render_stream(self, shown: str, final: bool) -> tuple[int, bool]:
        """Send the new suffix to the stream. Returns calls made and whether the stream took the text."""
        suffix = shown[len(self._sent) :] if shown.startswith(self._sent) else ""
        if not suffix and not final:
            return 0, True
        if self._stream is None:
            assert self._thread_ts is not None
            # buffer_size=1: every append goes out at once, because the engine already paces renders.
            self._stream = await self._client.chat_stream(
                buffer_size=1,
                channel=self._channel,
                thread_ts=self._thread_ts,
                recipient_team_id=self._team_id,
                recipient_user_id=self._user_id,
            )
        started = self._stream.ts is not None
        try:
            if final:
                await self._stream.stop(markdown_text=suffix)
            else:
                await self._stream.append(markdown_text=suffix)
        except SlackApiError as error:
            log.info(
                "Slack stream in %s unavailable (%s); using chat.update", self._channel, error_code(error)
            )
            self._streaming = False
            if error_code(error) in WORKSPACE_STREAM_ERRORS:
                self._streamless_teams.add(self._team_id)
            if self._stream.ts:
                self._pages = [_Page(0, self._stream.ts, to_mrkdwn(self._sent))]
            return (1 if started else 1 + int(final and self._stream.ts is not None)), False
        self._sent = shown
        return (1 if started else 1 + int(final)), True

    async def _render_pages(self, shown: str, final: bool) -> int:
        if not shown:
            return 0
        if not self._pages:
            self._pages.append(_Page(0))
        calls = 0
        while True:
            page = self._pages[-1]
            body = to_mrkdwn(page_markdown(shown, page.start, len(shown)))
            if len(body) <= PAGE_LIMIT:
                return calls + await self._write(page, body)
            cut = cut_point(shown, page.start, PAGE_LIMIT)
            calls += await self._write(page, to_mrkdwn(page_markdown(shown, page.start, cut)))
            self._pages.append(_Page(cut))

    async def _write(self, page: _Page, body: str) -> int:
        """Post or update one page; returns the chat.update calls made, the requests the budget counts."""
        if page.ts is not None and body == page.shown:
            return 0
        if page.ts is None:
            response = await self._client.chat_postMessage(
                channel=self._channel,
                thread_ts=self._thread_ts,
                text=body,
                unfurl_links=False,
                unfurl_media=False,
            )
            page.ts = str(response["ts"])
            page.shown = body
            return 0  # chat.postMessage has a limit of its own, per channel, not chat.update's
        await self._client.chat_update(channel=self._channel, ts=page.ts, text=body)
        page.shown = body
        return 1
