"""Parley on Slack: a Bolt AsyncApp over Socket Mode (SLACK_APP_TOKEN) or HTTP at /slack/events on PORT."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import aiohttp
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.commands import SlashCommands
from adapters.slack.errors import error_code
from adapters.slack.http import EVENTS_PATH, events_app
from adapters.slack.listeners import Listeners
from adapters.slack.people import People
from bot.config import Settings, SetupError
from bot.engine import Engine

__all__ = ["build_app", "serve", "start_http"]

log = logging.getLogger(__name__)
bolt_log = logging.getLogger("adapters.slack.bolt")
# Bolt reads SLACK_BOT_TOKEN from the environment itself and warns that it goes unused next to our client
# (which carries the same token, the API URL and the 429 handler) at every start: noise, not news.
bolt_log.addFilter(lambda record: "`token` will be unused" not in record.getMessage())

RATE_LIMIT_RETRIES = 5


def build_app(engine: Engine, settings: Settings) -> tuple[AsyncApp, Listeners]:
    """The Bolt app with Parley's listeners; `Listeners.finish` ends the replies under way."""
    if settings.slack_bot_token is None:
        raise SetupError("SLACK_BOT_TOKEN is not set")
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
        logger=bolt_log,
    )
    people = People(client)
    listeners = Listeners(engine, settings, people)
    listeners.register(app)
    SlashCommands(engine, people, listeners).register(app)
    return app, listeners


async def start_http(app: AsyncApp, signing_secret: str, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    """Serve events, slash commands and interactivity at /slack/events; the caller cleans the runner up."""
    runner = web.AppRunner(events_app(app, signing_secret), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve(engine: Engine, settings: Settings) -> None:
    """Run until cancelled; on the way out, replies under way are closed with the engine's cut-off note."""
    if settings.slack_app_token is None and settings.slack_signing_secret is None:
        raise SetupError("Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)")
    app, listeners = build_app(engine, settings)
    await _check(app.client.auth_test(), "SLACK_BOT_TOKEN", settings.slack_api_url)
    if settings.slack_app_token is not None:
        handler = AsyncSocketModeHandler(app, settings.slack_app_token.get_secret_value())
        await _check(handler.connect_async(), "SLACK_APP_TOKEN", settings.slack_api_url)
        log.info("Slack connected over Socket Mode")
        try:
            await asyncio.Event().wait()
        finally:
            await listeners.finish(cancel=True)
            await handler.close_async()
        return
    assert settings.slack_signing_secret is not None
    try:
        runner = await start_http(app, settings.slack_signing_secret.get_secret_value(), settings.port)
    except OSError as error:
        raise SetupError(f"could not serve Slack events on port {settings.port} ({error.strerror})") from None
    log.info("Slack events served at %s on port %d", EVENTS_PATH, settings.port)
    try:
        await asyncio.Event().wait()
    finally:
        await listeners.finish(cancel=True)
        await runner.cleanup()


async def _check(call: Awaitable[object], token_name: str, api_url: str) -> None:
    """Turn Slack refusing a token, or not answering, into one sentence at start."""
    try:
        await call
    except SlackApiError as error:
        code = error_code(error, default="an error")
        raise SetupError(f"Slack refused {token_name} ({code}); check it in the app's settings") from None
    except (aiohttp.ClientError, OSError) as error:
        raise SetupError(f"could not reach Slack at {api_url} ({type(error).__name__})") from None
