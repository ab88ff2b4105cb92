"""A loopback Slack: the Web API methods Parley calls, response URLs, file downloads and a Socket Mode socket.

    async with SlackAPI() as slack:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
        slack.fail["chat.startStream"] = "not_allowed_token_type"  # every call fails this way
        slack.rate_limit["chat.update"] = 2                         # the next 2 calls get 429, Retry-After 0
        slack.limits["chat.update"] = (50, 60.0)                    # or Slack's budget, with real Retry-After
        ...
        assert slack.methods() == ["auth.test", "assistant.threads.setStatus", "chat.startStream", ...]
        assert slack.messages[ts].text == "final text"

Every call is recorded (method, arguments, headers) and must carry `bot_token` (apps.connections.open:
`app_token`, in the Authorization header), or gets Slack's not_authed, invalid_auth or
not_allowed_token_type. Messages are kept as Slack would show them: streamed
text accumulates, chat.update replaces, and chat.update over `UPDATE_LIMIT` characters fails with
msg_too_long. `expire_streams()` ends every open stream, as Slack does after a few minutes.
`send_socket_event(payload)` pushes an events_api envelope through the Socket Mode connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from tests.support.loopback import serve_app

UPDATE_LIMIT = 4000
BOT_USER = "UBOT"
BOT_ID = "BBOT"
TEAM = "T1"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class SlackMessage:
    channel: str
    ts: str
    thread_ts: str | None
    text: str
    streaming: bool = False
    edits: int = 0


@dataclass
class SlackUser:
    id: str
    name: str
    is_admin: bool = False
    is_owner: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "team_id": TEAM,
            "name": self.name.lower(),
            "real_name": self.name,
            "is_admin": self.is_admin,
            "is_owner": self.is_owner,
            "is_primary_owner": False,
            "is_bot": False,
            "profile": {"display_name": self.name, "real_name": self.name},
        }


@dataclass
class SlackAPI:
    users: dict[str, SlackUser] = field(default_factory=dict)
    channel_creators: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # served at /files/NAME to the bot token only
    bot_token: str = "xoxb-test"
    app_token: str = "xapp-test"  # the only token apps.connections.open accepts

    def __post_init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: dict[str, SlackMessage] = {}
        self.responses: list[dict[str, Any]] = []  # what slash commands and actions sent to response_url
        self.fail: dict[str, str] = {}
        self.rate_limit: dict[str, int] = {}
        # Slack's own budgets, enforced when set: method -> (calls, seconds); `throttled` counts the 429s.
        self.limits: dict[str, tuple[int, float]] = {}
        self.throttled: dict[str, int] = {}
        self._recent: dict[str, list[float]] = {}
        self.socket_acks: list[str] = []
        self._ts = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def methods(self, *names: str) -> list[str]:
        return [c.method for c in self.calls if not names or c.method in names]

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def replies(self, channel: str | None = None) -> list[SlackMessage]:
        return [m for m in self.messages.values() if channel is None or m.channel == channel]

    def expire_streams(self) -> None:
        for message in self.messages.values():
            message.streaming = False

    async def __aenter__(self) -> SlackAPI:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/respond/{id}", self._respond)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/socket", self._socket)
        self._runner, self.port = await serve_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for socket in self._sockets:
            await socket.close()
        assert self._runner is not None
        await self._runner.cleanup()

    # Socket Mode

    async def send_socket_event(self, payload: dict[str, Any], kind: str = "events_api") -> str:
        while not self._sockets:
            await asyncio.sleep(0.01)
        envelope_id = f"env-{next(self._ts)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": 0,
            "retry_reason": "",
        }
        await self._sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_str(json.dumps({"type": "hello", "num_connections": 1}))
        async for frame in socket:
            if frame.type == WSMsgType.TEXT:
                self.socket_acks.append(json.loads(frame.data).get("envelope_id", ""))
        return socket

    # Web API

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        raw = await request.read()
        if request.content_type == "application/json":
            args: dict[str, Any] = json.loads(raw or b"{}")
        else:
            args = dict(parse_qsl(raw.decode()))
        args.update(request.query)
        self.calls.append(Call(method, args, dict(request.headers), time.monotonic()))
        wait = 0 if self.rate_limit.get(method, 0) > 0 else self._over_limit(method)
        if wait is not None:
            self.rate_limit[method] = max(0, self.rate_limit.get(method, 0) - 1)
            self.throttled[method] = self.throttled.get(method, 0) + 1
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(wait)}
            )
        if refusal := self._token_refusal(method, request.headers.get("Authorization", ""), args):
            return web.json_response({"ok": False, "error": refusal})
        if method in self.fail:
            return web.json_response({"ok": False, "error": self.fail[method]})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        body = handler(args) if handler else {}
        if "error" in body:
            return web.json_response({"ok": False, **body})
        return web.json_response({"ok": True, **body})

    def _token_refusal(self, method: str, authorization: str, args: dict[str, Any]) -> str | None:
        """Slack's answer to a call without the right token. apps.connections.open takes the app-level
        token, and only in the Authorization header; every other method takes the bot token."""
        token = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
        if method == "apps.connections.open":
            wanted = self.app_token
        else:
            wanted, token = self.bot_token, token or str(args.get("token", ""))
        if not token:
            return "not_authed"
        if token == wanted:
            return None
        return "not_allowed_token_type" if token in (self.bot_token, self.app_token) else "invalid_auth"

    def _over_limit(self, method: str) -> int | None:
        """None when the call is within Slack's budget, else the Retry-After seconds until a slot frees."""
        if method not in self.limits:
            return None
        capacity, window = self.limits[method]
        now = time.monotonic()
        recent = self._recent[method] = [t for t in self._recent.get(method, []) if t > now - window]
        if len(recent) >= capacity:
            return math.ceil(recent[0] + window - now)
        recent.append(now)
        return None

    def _new_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://loopback.slack.test/",
            "team": "Loopback",
            "user": "parley",
            "team_id": TEAM,
            "user_id": BOT_USER,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/socket"}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(args.get("user", ""))
        return {"user": user.payload()} if user else {"error": "user_not_found"}

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel", "")
        return {"channel": {"id": channel, "creator": self.channel_creators.get(channel, "UNOBODY")}}

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        ts = self._new_ts()
        message = SlackMessage(args["channel"], ts, args.get("thread_ts"), args.get("text", ""))
        self.messages[ts] = message
        return {"channel": message.channel, "ts": ts, "message": {"text": message.text, "ts": ts}}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(args.get("ts", ""))
        if message is None:
            return {"error": "message_not_found"}
        text = args.get("text", "")
        if len(text) > UPDATE_LIMIT:
            return {"error": "msg_too_long"}
        message.text, message.streaming = text, False
        message.edits += 1
        return {"channel": message.channel, "ts": message.ts, "text": text}

    def _streamed(self, args: dict[str, Any]) -> str:
        text = args.get("markdown_text") or ""
        for chunk in args.get("chunks") or []:
            if chunk.get("type") == "markdown_text":
                text += chunk.get("text", "")
        return text

    def _chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("thread_ts"):
            return {"error": "invalid_arguments"}
        ts = self._new_ts()
        text = self._streamed(args)
        self.messages[ts] = SlackMessage(args["channel"], ts, args["thread_ts"], text, streaming=True)
        return {"channel": args["channel"], "ts": ts}

    def _chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(args.get("ts", ""))
        if message is None or not message.streaming:
            return {"error": "message_not_in_streaming_state"}
        message.text += self._streamed(args)
        return {"channel": message.channel, "ts": message.ts}

    def _chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        body = self._chat_appendStream(args)
        if "error" not in body:
            self.messages[args["ts"]].streaming = False
        return body

    # Response URLs and files

    async def _respond(self, request: web.Request) -> web.Response:
        self.responses.append(await request.json())
        return web.Response(text="ok")

    async def _file(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.bot_token}":
            return web.Response(status=403)
        data = self.files.get(request.match_info["name"])
        return web.Response(body=data) if data is not None else web.Response(status=404)


def signed_headers(body: str, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends with an HTTP delivery, signed the way Slack signs them."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}
