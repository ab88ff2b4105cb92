"""Parley on Slack: a Bolt AsyncApp over Socket Mode (SLACK_APP_TOKEN) or HTTP at /slack/events on PORT."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.commands import SlashCommands
from adapters.slack.listeners import Listeners
from adapters.slack.people import People
from bot.config import Settings
from bot.engine import Engine

__all__ = ["build_app", "serve", "start_http"]

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
RATE_LIMIT_RETRIES = 5


def build_app(engine: Engine, settings: Settings) -> tuple[AsyncApp, Listeners]:
    """The Bolt app with Parley's listeners; `Listeners.finish` ends the replies under way."""
    if settings.slack_bot_token is None:
        raise ValueError("SLACK_BOT_TOKEN is not set")
    token = settings.slack_bot_token.get_secret_value()
    client = AsyncWebClient(token=token, base_url=settings.slack_api_url)
    # Slack's 429s carry Retry-After; the client waits that long and sends the call again.
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES))
    secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
    app = AsyncApp(
        client=client,
        signing_secret=secret,
        # Socket Mode deliveries are not signed; over HTTP every request must be.
        request_verification_enabled=settings.slack_app_token is None,
        logger=logging.getLogger("adapters.slack.bolt"),
    )
    people = People(client)
    listeners = Listeners(engine, settings, people)
    listeners.register(app)
    SlashCommands(engine, people, listeners).register(app)
    return app, listeners


async def start_http(app: AsyncApp, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    """Serve events, slash commands and interactivity at /slack/events; the caller cleans the runner up."""
    runner = web.AppRunner(app.web_app(path=EVENTS_PATH, port=port), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve(engine: Engine, settings: Settings) -> None:
    """Run until cancelled; on the way out, replies under way are closed with the engine's cut-off note."""
    app, listeners = build_app(engine, settings)
    if settings.slack_app_token is not None:
        handler = AsyncSocketModeHandler(app, settings.slack_app_token.get_secret_value())
        await handler.connect_async()
        log.info("Slack connected over Socket Mode")
        try:
            await asyncio.Event().wait()
        finally:
            await listeners.finish(cancel=True)
            await handler.close_async()
        return
    if settings.slack_signing_secret is None:
        raise ValueError(
            "Slack over HTTP needs SLACK_SIGNING_SECRET (or set SLACK_APP_TOKEN for Socket Mode)"
        )
    runner = await start_http(app, settings.port)
    log.info("Slack events served at %s on port %d", EVENTS_PATH, settings.port)
    try:
        await asyncio.Event().wait()
    finally:
        await listeners.finish(cancel=True)
        await runner.cleanup()
