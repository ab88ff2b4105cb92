"""Slack as a platform of the engine: a Bolt AsyncApp over Socket Mode (SLACK_APP_TOKEN) or HTTP at
/slack/events on PORT, the reply surfaces, and what the channels say (history, permalinks)."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.channels import Channels
from adapters.slack.commands import SlashCommands
from adapters.slack.controls import ActionHandlers
from adapters.slack.errors import error_code
from adapters.slack.history import History
from adapters.slack.http import EVENTS_PATH, events_app
from adapters.slack.listeners import PLATFORM, Listeners
from adapters.slack.people import People
from adapters.slack.surface import SlackSurface
from adapters.slack.votes import Votes
from adapters.slack.votes import post as post_ballot
from adapters.slack.workspace import Workspace
from bot.config import Settings, SetupError
from bot.controls import REOPEN
from bot.engine import Engine
from bot.metrics import Metrics, routes
from bot.models import ConversationKey, HistoryEntry

log = logging.getLogger(__name__)
bolt_log = logging.getLogger("adapters.slack.bolt")
# Bolt reads SLACK_BOT_TOKEN from the environment itself and warns that it goes unused next to our client
# (which carries the same token, the API URL and the 429 handler) at every start: noise, not news.
bolt_log.addFilter(lambda record: "`token` will be unused" not in record.getMessage())

RATE_LIMIT_RETRIES = 5
NO_MODE = "Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)"


class SlackPlatform:
    name = PLATFORM

    def __init__(self, engine: Engine, settings: Settings, *, host: str = "0.0.0.0", port: int | None = None):
        self._engine = engine
        self._settings = settings
        self._host = host
        self.port = settings.port if port is None else port  # HTTP mode; 0 picks a free port at start
        self._client: AsyncWebClient | None = None
        self._workspace: Workspace | None = None
        self._history: History | None = None
        self._channels: Channels | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._closed = asyncio.Event()
        self._streamless_teams: set[str] = set()  # workspaces where Slack refused native streams
        self._surfaces: weakref.WeakSet[SlackSurface] = weakref.WeakSet()

    async def start(self) -> None:
        settings = self._settings
        if settings.slack_bot_token is None:
            raise SetupError("SLACK_BOT_TOKEN is not set")
        if settings.slack_app_token is None and settings.slack_signing_secret is None:
            raise SetupError(NO_MODE)
        client = AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url
        )
        # Slack's 429s carry Retry-After; the client waits that long and sends the call again.
        client.retry_handlers.append(
            CountedRateLimits(self._engine.metrics, max_retry_count=RATE_LIMIT_RETRIES)
        )
        self._client = client
        people = People(client)
        self._workspace = Workspace.from_auth_test(
            await _check(client.auth_test(), "SLACK_BOT_TOKEN", settings.slack_api_url)
        )
        self._history = History(client, people, self._workspace)
        self._channels = Channels(client, people)
        app = self._app(client, people)
        if settings.slack_app_token is not None:
            self._socket = AsyncSocketModeHandler(app, settings.slack_app_token.get_secret_value())
            await _check(self._socket.connect_async(), "SLACK_APP_TOKEN", settings.slack_api_url)
            log.info("Slack connected over Socket Mode")
            return
        assert settings.slack_signing_secret is not None
        served = events_app(app, settings.slack_signing_secret.get_secret_value())
        served.add_routes(routes(self._engine.store, self._engine.metrics, self._engine.health))
        self._runner = web.AppRunner(served)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self.port).start()
        except OSError as error:
            await self._runner.cleanup()
            raise SetupError(f"could not serve Slack events on port {self.port} ({error.strerror})") from None
        self.port = self._runner.addresses[0][1]
        log.info("Slack events served at %s on port %d", EVENTS_PATH, self.port)

    def _app(self, client: AsyncWebClient, people: People) -> AsyncApp:
        secret = self._settings.slack_signing_secret
        app = AsyncApp(
            client=client,
            signing_secret=secret.get_secret_value() if secret else None,
            # Socket Mode deliveries are not signed; over HTTP every request must be.
            request_verification_enabled=self._settings.slack_app_token is None,
            # Acknowledge an event only once its message is in the inbox: an instance that dies after
            # acknowledging loses nothing, and one person's messages are stored in the order Slack
            # delivered them, whichever instance each reached.
            process_before_response=True,
            logger=bolt_log,
        )
        Listeners(self._engine, self._settings, people).register(app)
        SlashCommands(self._engine, people).register(app)
        ActionHandlers(self._engine, people).register(app)
        Votes(self._engine, people).register(app)
        app.event("app_uninstalled")(self._uninstalled)
        app.event("tokens_revoked")(self._tokens_revoked)
        return app

    async def _uninstalled(self) -> None:
        log.error("Slack: Parley was uninstalled from the workspace; install it again to use it there")
        self._closed.set()

    async def _tokens_revoked(self, event: dict[str, Any], context: AsyncBoltContext) -> None:
        assert self._workspace is not None
        if self._workspace.bot_user_id in ((event.get("tokens") or {}).get("bot") or ()):
            log.error("Slack: SLACK_BOT_TOKEN was revoked; reinstall the app and set the new token")
            self._closed.set()

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()
        if self._runner is not None:
            await self._runner.cleanup()
        for surface in list(self._surfaces):  # statuses still kept alive by a reply that was cut off
            await surface.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def surface_for(
        self, conversation: ConversationKey, reply_to: Mapping[str, Any] | None = None
    ) -> SlackSurface:
        """A reply to the message `reply_to` describes, streamed to its asker; without one (nobody asked),
        a message posted and edited in the conversation."""
        assert self._client is not None and self._workspace is not None
        reply_to = reply_to or {}
        if REOPEN in reply_to:  # an edited question: its answer is rewritten where it shows
            return await self.reopen(conversation, reply_to[REOPEN])
        surface = SlackSurface(
            self._client,
            channel=str(reply_to.get("channel") or conversation.channel_id),
            thread_ts=reply_to.get("thread_ts", conversation.thread_id),
            team_id=str(reply_to.get("team") or self._workspace.team_id),
            user_id=reply_to.get("user"),
            recipient_team_id=reply_to.get("user_team"),
            min_interval=self._settings.slack_render_interval,
            streamless_teams=self._streamless_teams,
            room=self._engine.pacer.has_room,
            take=self._engine.pacer.take,
            clock=self._engine.clock,
        )
        self._surfaces.add(surface)
        return surface

    async def ballot(self, conversation: ConversationKey, comparison: int, text: str) -> None:
        """A comparison's vote buttons, in a message of their own (adapters/slack/votes.py)."""
        assert self._client is not None
        await post_ballot(self._client, conversation, comparison, text)

    async def reopen(self, conversation: ConversationKey, refs: Mapping[str, Any]) -> SlackSurface:
        assert self._client is not None
        return SlackSurface.reopened(
            self._client,
            refs,
            channel=conversation.channel_id,
            min_interval=self._settings.slack_render_interval,
            clock=self._engine.clock,
        )

    async def history(
        self,
        conversation: ConversationKey,
        *,
        limit: int,
        before: str | None = None,
        after: str | None = None,
    ) -> list[HistoryEntry]:
        assert self._history is not None
        return await self._history.read(conversation, limit=limit, before=before, after=after)

    async def permalink(self, conversation: ConversationKey, message_id: str) -> str:
        assert self._workspace is not None
        return self._workspace.permalink(conversation.channel_id, message_id, conversation.thread_id)

    async def resolve_channel(self, near: ConversationKey, typed: str) -> ConversationKey | None:
        assert self._channels is not None
        return await self._channels.resolve(typed)

    async def may_post(self, conversation: ConversationKey) -> bool:
        assert self._channels is not None
        return await self._channels.may_post(conversation)


class CountedRateLimits(AsyncRateLimitErrorRetryHandler):
    """Slack's 429s, waited out and retried as before, and counted for the metrics."""

    def __init__(self, metrics: Metrics, *, max_retry_count: int) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self._metrics = metrics

    async def can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is not None and response.status_code == 429:
            self._metrics.platform_429s.labels(PLATFORM).inc()
        return await super().can_retry_async(state=state, request=request, response=response, error=error)


async def _check(call: Awaitable[Any], token_name: str, api_url: str) -> Any:
    """Turn Slack refusing a token, or not answering, into one sentence at start."""
    try:
        return await call
    except SlackApiError as error:
        code = error_code(error, default="an error")
        raise SetupError(f"Slack refused {token_name} ({code}); check it in the app's settings") from None
    except (aiohttp.ClientError, OSError) as error:
        raise SetupError(f"could not reach Slack at {api_url} ({type(error).__name__})") from None
