"""One Slack reply: a status while waiting, Slack's native text stream, and chat.update pages as fallback.

The engine paces renders from `budget`, which names the Web API method behind every request of the next
render: Slack limits each method on its own, per workspace (chat.postMessage per channel). A reply that
would have to wait for a stream slot posts and edits a message instead, and so does a reply nobody asked
for (a stream needs a recipient). `refs` says where the reply shows, so that after a crash `reopened`
can rewrite it: the stream stopped, its messages updated with the stored text, leftover pages deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_chat_stream import AsyncChatStream
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.controls import actions, with_text
from adapters.slack.errors import error_code
from adapters.slack.mrkdwn import (
    cut_point,
    neutralize,
    page_markdown,
    plain_destinations,
    stable_length,
    to_mrkdwn,
)
from bot.controls import ReplyControls
from bot.models import RateLimit, RenderBudget
from bot.streaming import Clock, SystemClock

log = logging.getLogger(__name__)

# chat.update answers msg_too_long near 4,000 characters: each page stays under this.
PAGE_LIMIT = 3800
# chat.startStream, chat.appendStream and chat.stopStream take at most 12,000 characters a call.
STREAM_TEXT_LIMIT = 12_000
STATUS = "is thinking…"
# Slack removes a thread status after two minutes without a message; it is set again well before that.
STATUS_REFRESH = 60.0
# Calls a minute per workspace, a little under Slack's tiers for each method.
START_CAPACITY = 18  # chat.startStream, Tier 2 (20+)
STOP_CAPACITY = 18  # chat.stopStream, Tier 2 (20+)
APPEND_CAPACITY = 90  # chat.appendStream, Tier 4 (100+)
UPDATE_CAPACITY = 45  # chat.update, Tier 3 (50+)
DELETE_CAPACITY = 45  # chat.delete, Tier 3 (50+)
# Stream errors that hold for the whole workspace (not one channel or one message): later replies there
# start on the message path at once, with its budget.
WORKSPACE_STREAM_ERRORS = {"not_allowed_token_type", "unknown_method", "missing_scope", "feature_not_enabled"}


def method_limit(team_id: str, method: str) -> RateLimit:
    """Slack's per-workspace budget for one of the methods a reply uses."""
    capacity = {
        "chat.startStream": START_CAPACITY,
        "chat.stopStream": STOP_CAPACITY,
        "chat.appendStream": APPEND_CAPACITY,
        "chat.update": UPDATE_CAPACITY,
        "chat.delete": DELETE_CAPACITY,
    }[method]
    return RateLimit(f"slack:{team_id}:{method}", capacity, 60.0)


def post_limit(team_id: str, channel: str) -> RateLimit:
    """chat.postMessage: about one message a second per channel."""
    return RateLimit(f"slack:{team_id}:chat.postMessage:{channel}", 1, 1.0)


async def _free(limits: Sequence[RateLimit], *, wait: bool = False) -> bool:
    """A surface with no pacer to ask: every request may go."""
    return True


@dataclass(slots=True)
class _Page:
    start: int  # offset in the reply text where this message's part begins
    ts: str | None = None
    shown: str = ""
    controlled: bool | None = None  # the controls it shows: None, Stop (False) or Regenerate (True)

    def shows(self, body: str, controlled: bool | None) -> bool:
        """Whether the page shows this already, so that writing it would call nothing."""
        return self.ts is not None and body == self.shown and self.controlled == controlled


class SlackSurface:
    """Streams into `thread_ts` when there is one and someone to stream to (`user_id`, the asker); a
    top-level reply (a DM) and a reply nobody asked for use the message path.

    `team_id` is the workspace the app is installed in, whose budgets the reply draws on;
    `recipient_team_id` is the asker's own team, which differs in Slack Connect channels. `room` says
    whether requests would fit their budgets now (the engine's `Pacer.has_room`); `take` takes the
    slot of a post no render reserved (`Pacer.take`)."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        thread_ts: str | None,
        team_id: str,
        user_id: str | None = None,
        recipient_team_id: str | None = None,
        min_interval: float = 1.0,
        streamless_teams: set[str] | None = None,
        room: Callable[[Iterable[RateLimit]], bool] | None = None,
        take: Callable[..., Awaitable[bool]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._team_id = team_id
        self._user_id = user_id
        self._recipient_team_id = recipient_team_id or team_id
        self._min_interval = min_interval
        self._room = room or (lambda limits: True)
        self._take = take or _free
        self._clock = clock or SystemClock()
        self._stream: AsyncChatStream | None = None
        self._streamless_teams = streamless_teams if streamless_teams is not None else set()
        self._streaming = thread_ts is not None and user_id is not None
        self._path_chosen = False
        self._sent = ""  # neutralized text the stream has carried so far
        self._pages: list[_Page] = []
        self._status_task: asyncio.Task[None] | None = None
        self._spent: list[RateLimit] = []  # the budget of every request the current render made
        # A reopened reply: its stream to stop first, and its later pages, reused in order as pages fill.
        self._open_stream: str | None = None
        self._reusable: list[str] = []
        self._stream_open = True  # until chat.stopStream ended it
        self._controls: ReplyControls | None = None  # shown under the final text

    @classmethod
    def reopened(
        cls,
        client: AsyncWebClient,
        refs: Mapping[str, Any],
        *,
        channel: str,
        min_interval: float = 1.0,
        clock: Clock | None = None,
    ) -> SlackSurface:
        """The reply `refs` describe, on the message path: its next final render rewrites it."""
        surface = cls(
            client,
            channel=channel,
            thread_ts=refs.get("thread_ts"),
            team_id=str(refs.get("team") or ""),
            min_interval=min_interval,
            clock=clock,
        )
        if refs.get("stream"):
            pages = [str(refs["stream"])]
            surface._open_stream = pages[0] if refs.get("open") else None
        else:
            pages = [str(ts) for ts in refs.get("pages") or ()]
        if pages:
            surface._pages = [_Page(0, pages[0])]
            surface._reusable = pages[1:]
        return surface

    @property
    def refs(self) -> dict[str, Any] | None:
        """Where the reply shows: its stream (and whether it is still open), or its pages; None while
        nothing shows."""
        where: dict[str, Any] = {"thread_ts": self._thread_ts, "team": self._team_id}
        if self._pages:
            shown = [page.ts for page in self._pages if page.ts] + self._reusable
            return {**where, "pages": shown} if shown else None
        if self._stream is not None and self._stream.ts:
            return {**where, "stream": self._stream.ts, "open": self._stream_open}
        return None

    @property
    def budget(self) -> RenderBudget:
        """What the next render costs; the pacer reads it before every render, and the first read
        chooses between the stream and the message path."""
        self._choose_path()
        interval = self._min_interval
        if self._streaming:
            start, stop = (method_limit(self._team_id, m) for m in ("chat.startStream", "chat.stopStream"))
            if self._stream is None or self._stream.ts is None:
                return RenderBudget(interval, edit=(start,), final=(start, stop), owed=(stop,))
            append = method_limit(self._team_id, "chat.appendStream")
            return RenderBudget(interval, edit=(append,), final=(stop,))
        update = (method_limit(self._team_id, "chat.update"),)
        post = (post_limit(self._team_id, self._channel),)
        if not self._pages or self._pages[-1].ts is None:  # the first page, or the next, is to be posted
            return RenderBudget(interval, edit=post, final=post, owed=update)
        # However far the final text runs past the last one shown, it may need a new page; the pacer
        # asks `final_cost` with the text, which says whether it does.
        return RenderBudget(interval, edit=update, final=update + post, owed=update)

    def _choose_path(self) -> None:
        """Before the first render: stream only if the start and stop budgets have room for this reply
        beside every stream under way, else post and edit a message rather than queue."""
        if self._path_chosen:
            # Until the stream starts, a start slot can go to another instance (the pacer's copy of the
            # budget learns that when its own take is refused): then post rather than wait a minute.
            start = method_limit(self._team_id, "chat.startStream")
            if self._streaming and self._stream is None and not self._room([start]):
                self._streaming = False
            return
        self._path_chosen = True
        if self._team_id in self._streamless_teams:  # learned by another reply, maybe since this one began
            self._streaming = False
        if not self._streaming:
            return
        limits = [method_limit(self._team_id, m) for m in ("chat.startStream", "chat.stopStream")]
        if not self._room(limits):
            log.debug(
                "stream budget of %s spent; replying in %s by chat.update", self._team_id, self._channel
            )
            self._streaming = False

    def show_controls(self, controls: ReplyControls) -> None:
        self._controls = controls

    @property
    def message_ts(self) -> list[str]:
        """Every message this reply occupies, first to last."""
        if self._pages:
            return [page.ts for page in self._pages if page.ts]
        return [self._stream.ts] if self._stream and self._stream.ts else []

    async def start(self) -> None:
        """Show the thread's status, and keep it shown until the first text: Slack drops it after two
        minutes, and a slow provider can take longer than that."""
        if self._thread_ts is None:
            return
        if await self._set_status(STATUS):
            self._status_task = asyncio.create_task(self._keep_status())

    async def _keep_status(self) -> None:
        while True:
            await self._clock.sleep(STATUS_REFRESH)
            if not await self._set_status(STATUS):
                return

    async def _set_status(self, status: str) -> bool:
        assert self._thread_ts is not None
        try:
            await self._client.assistant_threads_setStatus(
                channel_id=self._channel, thread_ts=self._thread_ts, status=status
            )
        except Exception as error:  # a workspace or channel without assistant status: no indicator
            log.debug("no thinking status in %s: %s", self._channel, error)
            return False
        return True

    async def close(self) -> None:
        """Stop keeping the status alive, if the reply ended without a render (it was cancelled)."""
        await self._stop_status()

    async def _stop_status(self) -> None:
        if self._status_task is not None:
            self._status_task.cancel()
            await asyncio.gather(self._status_task, return_exceptions=True)
            self._status_task = None

    async def render(self, text: str, *, final: bool) -> list[RateLimit]:
        await self._stop_status()  # the text replaces the status, which Slack clears itself
        self._spent = []
        try:
            shown = neutralize(text if final else text[: stable_length(text)])
            if self._open_stream is not None:
                await self._stop_reopened_stream()
            streaming = self._streaming
            streamed = streaming and await self._render_stream(plain_destinations(shown), final)
            if not streamed and await self._posts_now(refused_stream=streaming, final=final):
                await self._render_pages(shown, final)
            if final:
                await self._delete_leftovers()
        except Exception:
            if final and self._thread_ts is not None and not self.message_ts:
                await self._set_status("")  # nothing was posted that would clear it
            raise
        return self._spent

    async def _posts_now(self, *, refused_stream: bool, final: bool) -> bool:
        """Whether the message path may write now. After a stream refused before it showed anything,
        the post that replaces it was not reserved: it takes the channel's post slot first. An
        intermediate render without one leaves the post to the next render, which waits for it; a final
        waits for the slot, since nothing renders after it."""
        if not refused_stream or self._pages:
            return True
        return await self._take([self._limit("chat.postMessage")], wait=final)

    def _spend(self, method: str) -> None:
        self._spent.append(self._limit(method))

    def _limit(self, method: str) -> RateLimit:
        if method == "chat.postMessage":
            return post_limit(self._team_id, self._channel)
        return method_limit(self._team_id, method)

    async def _render_stream(self, shown: str, final: bool) -> bool:
        """Send the new suffix to the stream. Returns whether the stream took the text."""
        pieces = self._unsent_pieces(shown)
        if not pieces and not final:
            return True
        if self._stream is None:
            assert self._thread_ts is not None
            # buffer_size=1: every append goes out at once, because the engine already paces renders.
            self._stream = await self._client.chat_stream(
                buffer_size=1,
                channel=self._channel,
                thread_ts=self._thread_ts,
                recipient_team_id=self._recipient_team_id,
                recipient_user_id=self._user_id,
            )
        last = pieces.pop() if final and pieces else ""
        try:
            for piece in pieces:
                self._spend("chat.startStream" if self._stream.ts is None else "chat.appendStream")
                await self._stream.append(markdown_text=piece)
                self._sent += piece
            if final:
                started = self._stream.ts is not None
                try:
                    # Starts the stream first if need be; blocks go under the finished text.
                    blocks = {"blocks": [actions(self._controls)]} if self._controls else {}
                    await self._stream.stop(markdown_text=last, **blocks)
                finally:
                    if not started:
                        self._spend("chat.startStream")
                    if self._stream.ts is not None:
                        self._spend("chat.stopStream")
                self._sent += last
                self._stream_open = False
        except SlackApiError as error:
            self._leave_stream(error)
            return False
        return True

    def _leave_stream(self, error: SlackApiError) -> None:
        """Continue on the message path: by chat.update on the stream's message, if it has one."""
        assert self._stream is not None
        log.info("Slack stream in %s unavailable (%s); using chat.update", self._channel, error_code(error))
        self._streaming = False
        if error_code(error) in WORKSPACE_STREAM_ERRORS:
            self._streamless_teams.add(self._team_id)
        if self._stream.ts:
            self._pages = [_Page(0, self._stream.ts, to_mrkdwn(self._sent))]

    async def _render_pages(self, shown: str, final: bool) -> None:
        """Fill the last page; a text that outgrows it continues on a new page, which an intermediate
        render leaves to the next render to post, so the post waits for the channel's budget."""
        if not shown:
            return
        if not self._pages:
            self._pages.append(_Page(0))
        for start, body, last in self._layout(shown, final):
            if start != self._pages[-1].start:
                self._pages.append(_Page(start))
            if body is not None:
                await self._write(self._pages[-1], body, self._controls if last else None, ended=final)

    def _layout(self, shown: str, final: bool) -> Iterator[tuple[int, str | None, bool]]:
        """The pages `shown` fills from the reply's last page on: where each starts, its body, and
        whether it is the last. An intermediate render opens the page after a full one with no body,
        for the next render to post."""
        start = self._pages[-1].start if self._pages else 0
        while True:
            body = to_mrkdwn(page_markdown(shown, start, len(shown)))
            if len(body) <= PAGE_LIMIT:
                yield start, body, True
                return
            cut = cut_point(shown, start, PAGE_LIMIT)
            yield start, to_mrkdwn(page_markdown(shown, start, cut)), False
            start = cut
            if not final:
                yield start, None, True
                return

    def final_cost(self, text: str) -> list[RateLimit]:
        """The requests the final render of `text` makes, so that the pacer reserves only those: a text
        that fits the reply's last page is one chat.update, and holds no post slot for a page it will
        not open. (A stream Slack refuses midway goes on by pages; the render reports what it called.)"""
        self._choose_path()
        shown = neutralize(text)
        methods = ["chat.stopStream"] if self._open_stream is not None else []
        if self._streaming:
            methods += self._final_stream_calls(plain_destinations(shown))
            return [self._limit(method) for method in methods]
        reusable = len(self._reusable)
        for index, (start, body, last) in enumerate(self._layout(shown, True) if shown else ()):
            page = self._pages[-1] if index == 0 and self._pages else _Page(start)
            assert body is not None  # a final writes every page it opens
            if page.shows(body, True if last and self._controls is not None else None):
                continue
            if page.ts is None and reusable:
                reusable -= 1  # a reopened reply's own message, rewritten
                methods.append("chat.update")
            else:
                methods.append("chat.postMessage" if page.ts is None else "chat.update")
        return [self._limit(method) for method in methods + ["chat.delete"] * reusable]

    def _unsent_pieces(self, shown: str) -> list[str]:
        """What the stream has not shown of `shown`, in the pieces one append carries."""
        suffix = shown[len(self._sent) :] if shown.startswith(self._sent) else ""
        return [suffix[i : i + STREAM_TEXT_LIMIT] for i in range(0, len(suffix), STREAM_TEXT_LIMIT)]

    def _final_stream_calls(self, shown: str) -> list[str]:
        """What a final render on the stream calls: the new text in pieces, the last one with the stop."""
        started = self._stream is not None and self._stream.ts is not None
        methods = []
        for _ in self._unsent_pieces(shown)[:-1]:  # the pieces before the last
            methods.append("chat.appendStream" if started else "chat.startStream")
            started = True
        return methods + (["chat.stopStream"] if started else ["chat.startStream", "chat.stopStream"])

    async def _stop_reopened_stream(self) -> None:
        """End the stream a crash left open, so its message can be rewritten."""
        ts, self._open_stream = self._open_stream, None
        self._spend("chat.stopStream")
        try:
            await self._client.chat_stopStream(channel=self._channel, ts=ts)
        except SlackApiError as error:  # Slack ended it already, after a few minutes
            log.debug("stream %s in %s was not open: %s", ts, self._channel, error_code(error))

    async def _delete_leftovers(self) -> None:
        """A reopened reply whose text now needs fewer pages than it showed: the rest go."""
        while self._reusable:
            ts = self._reusable.pop()
            self._spend("chat.delete")
            try:
                await self._client.chat_delete(channel=self._channel, ts=ts)
            except SlackApiError as error:  # someone deleted it already
                log.info("could not delete page %s in %s: %s", ts, self._channel, error_code(error))

    async def _write(
        self, page: _Page, body: str, controls: ReplyControls | None = None, *, ended: bool = False
    ) -> None:
        """Post or update one page (a reopened reply's own messages first); the page being written
        carries the reply's controls, and a page the text has moved past gives them up."""
        wanted = None if controls is None else ended
        if page.shows(body, wanted):
            return
        blocks: dict[str, Any] = {}
        if controls is not None:
            blocks = {"blocks": with_text(body, controls, ended=ended)}
        elif page.controlled is not None:
            blocks = {"blocks": []}
        if page.ts is None and self._reusable:
            page.ts = self._reusable.pop(0)
        if page.ts is None:
            self._spend("chat.postMessage")
            response = await self._client.chat_postMessage(
                channel=self._channel,
                thread_ts=self._thread_ts,
                text=body,
                unfurl_links=False,
                unfurl_media=False,
                **blocks,
            )
            page.ts = str(response["ts"])
        else:
            self._spend("chat.update")
            await self._client.chat_update(channel=self._channel, ts=page.ts, text=body, **blocks)
        page.shown = body
        page.controlled = wanted
