"""Slack's HTTP deliveries at /slack/events: the signature is checked on the raw bytes before anything
is parsed, so a request anyone can send gets 401, and a signed body that does not parse gets 400, with
nothing dispatched and no traceback."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from urllib.parse import parse_qsl

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.request.internals import parse_body

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
MAX_AGE = 300  # seconds: an older (or later) timestamp is a replay
TIMESTAMP_DIGITS = 12  # a Unix time in seconds, with room to spare


def events_app(app: AsyncApp, signing_secret: str) -> web.Application:
    """An aiohttp application serving `app` at EVENTS_PATH."""
    secret = signing_secret.encode()

    async def events(request: web.Request) -> web.Response:
        raw = await request.read()
        if not _signed(secret, raw, request):
            if _ssl_check(raw, request):
                return web.Response(status=200)
            log.debug("refused a Slack request without a valid signature")
            return web.json_response({"error": "invalid signature"}, status=401)
        try:
            text = raw.decode("utf-8")
            # Bolt's own parser, so what passes here is what Bolt will read.
            if not isinstance(parse_body(text, request.content_type), dict):
                raise TypeError("not an object")
            bolt_request = AsyncBoltRequest(
                body=text, query=request.query_string, headers=dict(request.headers)
            )
        except (ValueError, TypeError, AttributeError):  # not UTF-8, malformed JSON, not an object
            log.warning("refused a signed Slack request whose body does not parse")
            return web.json_response({"error": "unreadable body"}, status=400)
        return await to_aiohttp_response(await app.async_dispatch(bolt_request))

    web_app = web.Application()
    web_app.router.add_post(EVENTS_PATH, events)
    return web_app


def _signed(secret: bytes, raw: bytes, request: web.Request) -> bool:
    """Slack's HMAC-SHA256 of `v0:{timestamp}:{body}`, with a timestamp within five minutes of now."""
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    signature = request.headers.get("X-Slack-Signature", "")
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > TIMESTAMP_DIGITS:
        return False
    if not signature.isascii() or abs(time.time() - int(timestamp)) > MAX_AGE:
        return False
    digest = hmac.new(secret, b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"v0={digest}", signature)


def _ssl_check(raw: bytes, request: web.Request) -> bool:
    """Slack's certificate check for slash command URLs comes unsigned; it is answered, not dispatched."""
    if request.content_type != "application/x-www-form-urlencoded":
        return False
    fields = parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
    return dict(fields).get("ssl_check") == "1"
