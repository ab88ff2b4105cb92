"""A loopback Slack: the Web API methods Parley calls, response URLs, file downloads and a Socket Mode socket.

    async with SlackAPI() as slack:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
        slack.fail["chat.startStream"] = "not_allowed_token_type"  # every call fails this way
        slack.rate_limit["chat.update"] = 2                         # the next 2 calls get 429, Retry-After 0
        ...
        assert slack.methods() == ["auth.test", "assistant.threads.setStatus", "chat.startStream", ...]
        assert slack.messages[ts].text == "final text"

Every call is recorded (method, arguments, headers) and must carry `bot_token` (apps.connections.open:
`app_token`, in the Authorization header), or gets Slack's not_authed, invalid_auth or
not_allowed_token_type. Messages are kept as Slack would show them: streamed
text accumulates, chat.update replaces, and chat.update over `UPDATE_LIMIT` characters fails with
msg_too_long. `expire_streams()` ends every open stream, as Slack does after a few minutes.
`send_socket_event(payload)` pushes an events_api envelope through the Socket Mode connection.
`say(user, channel, text)` records what a person posted (it then shows in conversations.history and
conversations.replies, whether or not Parley was told about it); a message's ts is Unix time, later
than every ts the emulator has seen.

As strict as Slack where Parley depends on it:
- rate limits: each method's own tier per workspace (`RATE_LIMITS`, chat.postMessage per channel),
  answered with 429 and Retry-After; `limits` can be changed or cleared by a test;
- scopes: `SlackAPI(scopes={...})` grants only those, and a method (conversations.info by channel type)
  without its scope answers missing_scope; `scopes=None` grants every scope;
- chat.startStream needs recipient_user_id and recipient_team_id outside DMs, and no markdown_text or
  chunk text may pass 12,000 characters;
- assistant.threads.setStatus checks its arguments; `status(channel, thread_ts)` is what the thread
  shows: cleared by the app's next message in the thread, by an empty status or after `status_timeout`;
- Block Kit, in chat.postMessage, chat.update and chat.stopStream: more than 50 blocks, a block id used
  twice or over 255 characters, a section's text over 3,000 characters, an actions block with more
  than 25 elements, a button's text over 75 characters or value over 2,000, an action id used twice or
  over 255, a static select with no options or more than 100, an option's text over 75 or value over
  150 characters, a placeholder over 150: invalid_blocks. `block_action(ts, action_id, user=…)` makes
  the block_actions payload Slack sends when someone uses an element a message shows, and only then;
- Socket Mode spreads envelopes over the open connections in turn (one each, never all), as Slack does
  for an app's up to 10 connections (an 11th is closed at once), and sends an envelope again, with
  `retry_attempt` counting up and on whichever connection is next, when it was not acked within
  `socket_ack_timeout` (its connection may have died); `socket_connections` counts those open, and
  `delivered_on[envelope_id]` says which connection (numbered from 1 as they opened) carried it;
- conversations.history pages newest first (from `oldest` forward when only `oldest` is given) and
  conversations.replies oldest first, the parent first, both by `limit`, `cursor` and
  `response_metadata.next_cursor` with `has_more`, `oldest`/`latest` exclusive unless `inclusive`;
  they answer channel_not_found for a malformed or unknown channel (`channels`, when set, lists the ones
  that exist), thread_not_found for a `ts` that is no message there, invalid_cursor, invalid_ts_oldest
  and invalid_ts_latest, and need the `*:history` scope of the conversation's type;
- conversations.list pages by `limit` (at most 1,000) and `cursor`, lists only the `types` asked for
  (public_channel by default), each needing its `*:read` scope, and answers invalid_types, invalid_limit
  and invalid_cursor; `channel_names` names the channels;
- with `joined` set, the app is a member only of those channels: conversations.info says `is_member`,
  and chat.postMessage elsewhere (outside DMs) answers not_in_channel, as without chat:write.public;
- users.info gives each person's `tz` (an IANA name), `tz_label` and `tz_offset` when they have one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from aiohttp import WSMsgType, web

from tests.support.loopback import serve_app

UPDATE_LIMIT = 4000
STREAM_TEXT_LIMIT = 12_000  # markdown_text, and the text of each chunk, in the chat.*Stream methods
BOT_USER = "UBOT"
BOT_ID = "BBOT"
TEAM = "T1"

# Slack's tiers, per method per workspace: (calls, seconds). chat.postMessage is limited per channel:
# about one a second, with short bursts allowed (Slack does not say how large; we allow 3 in 3 s).
RATE_LIMITS: dict[str, tuple[int, float]] = {
    "chat.startStream": (20, 60.0),  # Tier 2
    "chat.stopStream": (20, 60.0),  # Tier 2
    "chat.appendStream": (100, 60.0),  # Tier 4
    "chat.update": (50, 60.0),  # Tier 3
    "chat.postMessage": (3, 3.0),  # special, per channel
    "chat.delete": (50, 60.0),  # Tier 3
    # Tier 3 for internal and Marketplace apps (apps distributed outside the Marketplace get 1 a minute).
    "conversations.history": (50, 60.0),
    "conversations.replies": (50, 60.0),
}
PER_CHANNEL_LIMITS = {"chat.postMessage"}
SOCKET_CONNECTIONS_LIMIT = 10  # Slack's most open Socket Mode connections per app

# The bot scope each method needs; conversations.info needs the one for the conversation's type.
METHOD_SCOPES = {
    "assistant.threads.setStatus": "chat:write",  # assistant:write is being retired
    "chat.postMessage": "chat:write",
    "chat.postEphemeral": "chat:write",
    "chat.update": "chat:write",
    "chat.delete": "chat:write",
    "chat.startStream": "chat:write",
    "chat.appendStream": "chat:write",
    "chat.stopStream": "chat:write",
    "users.info": "users:read",
}
CONVERSATION_SCOPES = {
    "channel": "channels:read",
    "group": "groups:read",
    "mpim": "mpim:read",
    "im": "im:read",
}
# conversations.history and conversations.replies need the history scope of the conversation's type.
HISTORY_SCOPES = {
    "channel": "channels:history",
    "group": "groups:history",
    "mpim": "mpim:history",
    "im": "im:history",
}
HISTORY_METHODS = {"conversations.history", "conversations.replies"}
# Page sizes: the largest `limit` each method honours, and what it uses when none is given.
HISTORY_PAGE = {"conversations.history": (999, 100), "conversations.replies": (1000, 1000)}
_CHANNEL_ID = re.compile(r"[CDG][A-Z0-9]+")
_TS = re.compile(r"\d+\.\d+")


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    headers: dict[str, str]
    at: float
    ok: bool = True  # False when Slack refused it (an error, or 429)


@dataclass
class SlackMessage:
    channel: str
    ts: str
    thread_ts: str | None
    text: str
    streaming: bool = False
    edits: int = 0
    user: str | None = BOT_USER  # who posted it; the app's own messages also carry its bot_id
    bot_id: str | None = BOT_ID
    subtype: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    def payload(self, replies: list[SlackMessage]) -> dict[str, Any]:
        """The message as conversations.history and conversations.replies show it."""
        shown: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        for name in ("user", "bot_id", "subtype"):
            if getattr(self, name) is not None:
                shown[name] = getattr(self, name)
        if self.files:
            shown["files"] = self.files
        if self.is_reply:
            shown["thread_ts"] = self.thread_ts
        elif replies:  # a thread's parent
            users = list(dict.fromkeys(r.user or r.bot_id or "" for r in replies))
            shown |= {"thread_ts": self.ts, "reply_count": len(replies), "reply_users": users}
            shown["latest_reply"] = replies[-1].ts
        return shown


@dataclass
class ThreadStatus:
    text: str
    set_at: float


@dataclass
class SlackUser:
    id: str
    name: str
    is_admin: bool = False
    is_owner: bool = False
    tz: str | None = None  # the IANA zone the person set in Slack

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "deleted": False,
            "team_id": TEAM,
            "name": self.name.lower(),
            "real_name": self.name,
            "is_admin": self.is_admin,
            "is_owner": self.is_owner,
            "is_primary_owner": False,
            "is_bot": False,
            "profile": {"display_name": self.name, "real_name": self.name},
            **({"tz": self.tz, "tz_label": self.tz, "tz_offset": _offset(self.tz)} if self.tz else {}),
        }


@dataclass
class SlackAPI:
    users: dict[str, SlackUser] = field(default_factory=dict)
    channel_creators: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # served at /files/NAME to the bot token only
    bot_token: str = "xoxb-test"
    app_token: str = "xapp-test"  # the only token apps.connections.open accepts
    scopes: set[str] | None = None  # the bot scopes granted; None grants every scope
    # Conversation types Slack would report; otherwise D… is a DM, G… a private channel, C… a public one.
    channel_types: dict[str, str] = field(default_factory=dict)
    status_timeout: float = 120.0  # Slack removes a thread status after two minutes without a message
    socket_ack_timeout: float = 3.0  # how long Socket Mode waits for an ack before sending again
    channels: set[str] | None = None  # the conversations that exist; None: every well-formed id
    channel_names: dict[str, str] = field(default_factory=dict)  # what conversations.list shows, by id
    joined: set[str] | None = None  # the channels the app is a member of; None: every one
    trigger_seconds: float = 3.0  # a trigger_id opens a view only this soon after it was issued

    def __post_init__(self) -> None:
        self.calls: list[Call] = []
        self.messages: dict[str, SlackMessage] = {}
        self.responses: list[dict[str, Any]] = []  # what slash commands and actions sent to response_url
        self.ephemerals: list[dict[str, Any]] = []  # chat.postEphemeral: seen only by `user`, never stored
        self.fail: dict[str, str] = {}
        self.rate_limit: dict[str, int] = {}
        # Slack's own budgets: method -> (calls, seconds); `throttled` counts the 429s per method.
        self.limits: dict[str, tuple[int, float]] = dict(RATE_LIMITS)
        self.throttled: dict[str, int] = {}
        self._recent: dict[str, list[float]] = {}
        self.refused_scopes: list[tuple[str, str]] = []  # (method, scope) for every missing_scope answer
        self.statuses: dict[tuple[str, str], ThreadStatus] = {}
        self.socket_acks: list[str] = []
        self.socket_deliveries: list[dict[str, Any]] = []  # every envelope sent, redeliveries included
        self._delivered_at: dict[str, float] = {}
        self._acked_at: dict[str, float] = {}
        self._redeliveries: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self.triggers: dict[str, tuple[float, bool]] = {}  # trigger_id -> (issued, exchanged)
        self.views: dict[str, dict[str, Any]] = {}  # the modals views.open opened, by view id
        self._last_ts = Decimal(0)
        self._sockets: list[tuple[int, web.WebSocketResponse]] = []  # open ones, with their numbers
        self._socket_numbers = itertools.count(1)
        self._turn = itertools.count()
        self.delivered_on: dict[str, int] = {}
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
        """Parley's messages (in `channel`), in the order they were posted."""
        mine = [m for m in self.messages.values() if m.bot_id == BOT_ID]
        return [m for m in mine if channel is None or m.channel == channel]

    def say(
        self,
        user: str,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        ts: str | None = None,
        **more: Any,
    ) -> SlackMessage:
        """Record what a person posted, as Slack keeps it; the event about it is the test's to send."""
        ts = ts or self._new_ts()
        self._seen_ts(ts)
        message = SlackMessage(channel, ts, thread_ts, text, user=user, bot_id=None, **more)
        self.messages[ts] = message
        return message

    def block_action(
        self, ts: str, action_id: str, *, user: str, value: str | None = None, team: str = TEAM
    ) -> dict[str, Any]:
        """The block_actions payload of someone using element `action_id` of message `ts` (choosing
        `value` in a select), as Slack sends it; only for an element the message shows."""
        message = self.messages[ts]
        found = [
            (block, element)
            for block in message.blocks
            if block.get("type") == "actions"
            for element in block["elements"]
            if element.get("action_id") == action_id
        ]
        assert found, f"message {ts} shows no element {action_id!r}"
        block, element = found[0]
        used: dict[str, Any] = {
            "type": element["type"],
            "action_id": action_id,
            "block_id": block["block_id"],
            "action_ts": self._new_ts(),
        }
        if element["type"] == "button":
            used |= {"text": element["text"], "value": element.get("value")}
        else:
            (option,) = [o for o in element["options"] if o["value"] == value]
            used["selected_option"] = option
        container = {
            "type": "message",
            "message_ts": ts,
            "channel_id": message.channel,
            "is_ephemeral": False,
        }
        shown: dict[str, Any] = {"type": "message", "ts": ts, "text": message.text, "blocks": message.blocks}
        if message.thread_ts:
            container["thread_ts"] = shown["thread_ts"] = message.thread_ts
        return {
            "type": "block_actions",
            "user": {"id": user, "team_id": team},
            "api_app_id": "A1",
            "token": "legacy-verification-token",
            "container": container,
            "trigger_id": self.trigger(),
            "team": {"id": team, "domain": "loopback"},
            "channel": {"id": message.channel, "name": message.channel.lower()},
            "message": {**shown, "user": message.user, "bot_id": message.bot_id},
            "response_url": f"{self.base_url}/respond/{message.channel}",
            "actions": [used],
        }

    def trigger(self) -> str:
        """A trigger_id, as Slack puts in a slash command's or an interaction's payload: views.open
        takes it once, within 3 seconds."""
        trigger_id = f"{next(self._ids)}.{int(time.time())}.loopback"
        self.triggers[trigger_id] = (time.monotonic(), False)
        return trigger_id

    def view_submission(
        self, view_id: str, values: dict[str, str], *, user: str, team: str = TEAM
    ) -> dict[str, Any]:
        """The view_submission payload of someone submitting an open modal with `values` by action_id,
        as Slack sends it. Like Slack's client, it refuses a submission that leaves a required input
        empty or is longer than its input's max_length."""
        view = self.views[view_id]
        state: dict[str, dict[str, Any]] = {}
        for block in view["blocks"]:
            if block["type"] != "input":
                continue
            element = block["element"]
            value = values.get(element["action_id"], element.get("initial_value") or "")
            assert value or block.get("optional"), f"{element['action_id']} is required"
            assert len(value) <= element.get("max_length", 3000), f"{element['action_id']} is too long"
            state[block["block_id"]] = {
                element["action_id"]: {"type": element["type"], "value": value or None}
            }
        return {
            "type": "view_submission",
            "team": {"id": team, "domain": "loopback"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team},
            "api_app_id": "A1",
            "token": "legacy-verification-token",
            "trigger_id": self.trigger(),
            "view": {**view, "state": {"values": state}},
            "response_urls": [],
            "is_enterprise_install": False,
        }

    def thread(self, channel: str, thread_ts: str) -> list[SlackMessage]:
        """The replies in a thread, oldest first (its parent not included)."""
        replies = [m for m in self.messages.values() if m.channel == channel and m.thread_ts == thread_ts]
        return sorted((m for m in replies if m.ts != thread_ts), key=lambda m: Decimal(m.ts))

    def expire_streams(self) -> None:
        for message in self.messages.values():
            message.streaming = False

    def channel_type(self, channel: str) -> str:
        if channel in self.channel_types:
            return self.channel_types[channel]
        return {"D": "im", "G": "group"}.get(channel[:1], "channel")

    def status(self, channel: str, thread_ts: str) -> str:
        """The status the thread shows now ("" for none)."""
        shown = self.statuses.get((channel, thread_ts))
        if shown is None or time.monotonic() - shown.set_at > self.status_timeout:
            return ""
        return shown.text

    async def __aenter__(self) -> SlackAPI:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/respond/{id}", self._respond)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/socket", self._socket)
        self._runner, self.port = await serve_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._redeliveries:
            task.cancel()
        for _number, socket in list(self._sockets):
            await socket.close()
        assert self._runner is not None
        await self._runner.cleanup()

    # Socket Mode

    @property
    def socket_connections(self) -> int:
        return len(self._sockets)

    async def send_socket_event(self, payload: dict[str, Any], kind: str = "events_api") -> str:
        """Deliver `payload`; like Slack, deliver it again (up to 3 times) while it is not acked in time."""
        while not self._sockets:
            await asyncio.sleep(0.01)
        envelope_id = await self._deliver(payload, kind, attempt=0)
        task = asyncio.create_task(self._redeliver(payload, kind, envelope_id))
        self._redeliveries.add(task)
        task.add_done_callback(self._redeliveries.discard)
        return envelope_id

    async def _deliver(self, payload: dict[str, Any], kind: str, *, attempt: int) -> str:
        envelope_id = f"env-{next(self._ids)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": attempt,
            "retry_reason": "timeout" if attempt else "",
        }
        while True:
            while not self._sockets:
                await asyncio.sleep(0.01)
            number, socket = self._sockets[next(self._turn) % len(self._sockets)]
            self.socket_deliveries.append(envelope)
            self._delivered_at[envelope_id] = time.monotonic()
            self.delivered_on[envelope_id] = number
            try:
                await socket.send_str(json.dumps(envelope))
            except ConnectionError:  # it closed meanwhile: the envelope goes on another connection
                continue
            return envelope_id

    async def _redeliver(self, payload: dict[str, Any], kind: str, envelope_id: str) -> None:
        for attempt in (1, 2, 3):
            await asyncio.sleep(self.socket_ack_timeout)
            acked = self._acked_at.get(envelope_id)
            if acked is not None and acked - self._delivered_at[envelope_id] <= self.socket_ack_timeout:
                return
            envelope_id = await self._deliver(payload, kind, attempt=attempt)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        if len(self._sockets) >= SOCKET_CONNECTIONS_LIMIT:
            await socket.close(message=b"too many connections")
            return socket
        opened = (next(self._socket_numbers), socket)
        self._sockets.append(opened)
        hello = {"type": "hello", "num_connections": len(self._sockets)}
        await socket.send_str(json.dumps(hello))
        try:
            async for frame in socket:
                if frame.type == WSMsgType.TEXT:
                    envelope_id = json.loads(frame.data).get("envelope_id", "")
                    self.socket_acks.append(envelope_id)
                    self._acked_at.setdefault(envelope_id, time.monotonic())
        finally:
            self._sockets.remove(opened)
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
        call = Call(method, args, dict(request.headers), time.monotonic())
        self.calls.append(call)
        response = self._answer(method, args, request.headers.get("Authorization", ""))
        call.ok = response.status == 200 and json.loads(response.text or "{}").get("ok", False)
        return response

    def _answer(self, method: str, args: dict[str, Any], authorization: str) -> web.Response:
        if refusal := self._token_refusal(method, authorization, args):
            return web.json_response({"ok": False, "error": refusal})
        wait = 0 if self.rate_limit.get(method, 0) > 0 else self._over_limit(method, args)
        if wait is not None:
            self.rate_limit[method] = max(0, self.rate_limit.get(method, 0) - 1)
            self.throttled[method] = self.throttled.get(method, 0) + 1
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(wait)}
            )
        if method in self.fail:
            return web.json_response({"ok": False, "error": self.fail[method]})
        if (needed := self._missing_scope(method, args)) is not None:
            self.refused_scopes.append((method, needed))
            provided = ",".join(sorted(self.scopes or ()))
            return web.json_response(
                {"ok": False, "error": "missing_scope", "needed": needed, "provided": provided}
            )
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

    def _over_limit(self, method: str, args: dict[str, Any]) -> int | None:
        """None when the call is within Slack's budget, else the Retry-After seconds until a slot frees."""
        if method not in self.limits:
            return None
        capacity, window = self.limits[method]
        key = f"{method}:{args.get('channel', '')}" if method in PER_CHANNEL_LIMITS else method
        now = time.monotonic()
        recent = self._recent[key] = [t for t in self._recent.get(key, []) if t > now - window]
        if len(recent) >= capacity:
            return max(1, math.ceil(recent[0] + window - now))
        recent.append(now)
        return None

    def _missing_scope(self, method: str, args: dict[str, Any]) -> str | None:
        """The scope Slack would say is missing for this call, if any."""
        if self.scopes is None:
            return None
        needed = METHOD_SCOPES.get(method)
        if method == "conversations.info":
            needed = CONVERSATION_SCOPES[self.channel_type(str(args.get("channel", "")))]
        if method in HISTORY_METHODS:
            needed = HISTORY_SCOPES[self.channel_type(str(args.get("channel", "")))]
        return needed if needed is not None and needed not in self.scopes else None

    def _new_ts(self) -> str:
        """Unix time in microseconds, as Slack's ts is: later than every ts seen so far."""
        now = Decimal(time.time_ns() // 1000) / 1_000_000
        self._last_ts = max(now, self._last_ts + Decimal("0.000001"))
        return f"{self._last_ts:.6f}"

    def _seen_ts(self, ts: str) -> None:
        self._last_ts = max(self._last_ts, Decimal(ts))

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
        if args.get("user") == BOT_USER:
            return {"user": {**SlackUser(BOT_USER, "Parley").payload(), "is_bot": True, "name": "parley"}}
        user = self.users.get(args.get("user", ""))
        return {"user": user.payload()} if user else {"error": "user_not_found"}

    def _exists(self, channel: str) -> bool:
        return bool(_CHANNEL_ID.fullmatch(channel)) and (self.channels is None or channel in self.channels)

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel", "")
        kind = self.channel_type(channel)
        flags = {f"is_{name}": kind == name for name in ("channel", "group", "mpim", "im")}
        info = {"id": channel, "creator": self.channel_creators.get(channel, "UNOBODY"), **flags}
        if not self._exists(channel):
            return {"error": "channel_not_found"}
        named = {"name": self.channel_names[channel]} if channel in self.channel_names else {}
        member = {} if kind == "im" else {"is_member": self._member(channel)}
        return {"channel": {**info, **named, **member, "is_private": kind != "channel"}}

    def _member(self, channel: str) -> bool:
        return self.joined is None or channel in self.joined

    def _conversations_list(self, args: dict[str, Any]) -> dict[str, Any]:
        """The workspace's conversations of the types asked for, `limit` a page, by cursor."""
        kinds = {"public_channel": "channel", "private_channel": "group", "mpim": "mpim", "im": "im"}
        asked = [t.strip() for t in str(args.get("types") or "public_channel").split(",") if t.strip()]
        if any(t not in kinds for t in asked):
            return {"error": "invalid_types"}
        for kind in asked:
            needed = CONVERSATION_SCOPES[kinds[kind]]
            if self.scopes is not None and needed not in self.scopes:
                return {"error": "missing_scope", "needed": needed}
        try:
            limit = int(args.get("limit") or 100)
        except ValueError:
            return {"error": "invalid_limit"}
        if not 1 <= limit <= 1000:
            return {"error": "invalid_limit"}
        wanted = {kinds[t] for t in asked}
        listed = sorted(c for c in self.channel_names if self.channel_type(c) in wanted)
        start = 0
        if args.get("cursor"):
            try:
                after = base64.b64decode(str(args["cursor"]), validate=True).decode().split(":")[1]
            except (binascii.Error, UnicodeDecodeError, IndexError):
                return {"error": "invalid_cursor"}
            start = listed.index(after) if after in listed else len(listed)
        page, rest = listed[start : start + limit], listed[start + limit :]
        cursor = base64.b64encode(f"next_id:{rest[0]}".encode()).decode() if rest else ""
        channels = [
            {"id": c, "name": self.channel_names[c], "is_member": self._member(c), "is_archived": False}
            for c in page
        ]
        return {"channels": channels, "response_metadata": {"next_cursor": cursor}}

    def _assistant_threads_setStatus(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, thread_ts, status = args.get("channel_id"), args.get("thread_ts"), args.get("status")
        if channel is None or thread_ts is None or not isinstance(status, str):
            return {"error": "invalid_arguments"}
        if not _CHANNEL_ID.fullmatch(str(channel)):
            return {"error": "channel_not_found"}
        if not _TS.fullmatch(str(thread_ts)):
            return {"error": "invalid_thread_ts"}
        loading = args.get("loading_messages")
        if loading is not None and not (
            isinstance(loading, list)
            and 1 <= len(loading) <= 10
            and all(isinstance(m, str) and 1 <= len(m) <= 50 for m in loading)
        ):
            return {"error": "invalid_arguments"}
        if status:
            self.statuses[(channel, thread_ts)] = ThreadStatus(status, time.monotonic())
        else:
            self.statuses.pop((channel, thread_ts), None)
        return {}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        """Opens a modal for the trigger_id of a command or interaction: once, within 3 seconds."""
        trigger_id = str(args.get("trigger_id") or "")
        if trigger_id not in self.triggers:
            return {"error": "invalid_trigger_id"}
        issued, exchanged = self.triggers[trigger_id]
        if exchanged:
            return {"error": "exchanged_trigger_id"}
        if time.monotonic() - issued > self.trigger_seconds:
            return {"error": "expired_trigger_id"}
        view = args.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except ValueError:
                return {"error": "invalid_arguments"}
        if not isinstance(view, dict) or (problem := _view_problem(view)):
            found = problem if isinstance(view, dict) else "view must be an object"
            return {"error": "invalid_arguments", "response_metadata": {"messages": [f"[ERROR] {found}"]}}
        self.triggers[trigger_id] = (issued, True)
        view_id = f"V{next(self._ids):08}"
        opened = {**view, "id": view_id, "team_id": TEAM, "app_id": "A1", "hash": f"{view_id}.hash"}
        opened.setdefault("private_metadata", "")
        self.views[view_id] = opened
        return {"view": opened}

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self._exists(str(args.get("channel", ""))):
            return {"error": "channel_not_found"}
        channel = str(args["channel"])
        if self.channel_type(channel) != "im" and not self._member(channel):
            return {"error": "not_in_channel"}
        blocks = _blocks(args)
        if isinstance(blocks, str):
            return {"error": blocks}
        ts = self._new_ts()
        message = SlackMessage(
            args["channel"], ts, args.get("thread_ts"), args.get("text", ""), blocks=blocks
        )
        self.messages[ts] = message
        self._replied(message.channel, message.thread_ts)
        return {"channel": message.channel, "ts": ts, "message": {"text": message.text, "ts": ts}}

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        """Shown to one person in a channel and kept nowhere; Slack wants the channel, the user and a text."""
        channel, user = str(args.get("channel", "")), str(args.get("user", ""))
        if not self._exists(channel):
            return {"error": "channel_not_found"}
        if not user or (self.users and user not in self.users):
            return {"error": "user_not_found"}
        if not args.get("text") and not args.get("blocks") and not args.get("attachments"):
            return {"error": "no_text"}
        self.ephemerals.append(dict(args))
        return {"message_ts": self._new_ts()}

    def _replied(self, channel: str, thread_ts: str | None) -> None:
        """The app's message in a thread clears the thread's status."""
        if thread_ts:
            self.statuses.pop((channel, thread_ts), None)

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(args.get("ts", ""))
        if message is None:
            return {"error": "message_not_found"}
        text = args.get("text", "")
        if len(text) > UPDATE_LIMIT:
            return {"error": "msg_too_long"}
        blocks = _blocks(args)
        if isinstance(blocks, str):
            return {"error": blocks}
        message.text, message.streaming, message.blocks = text, False, blocks
        message.edits += 1
        return {"channel": message.channel, "ts": message.ts, "text": text}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(args.get("ts", ""))
        if message is None or message.channel != args.get("channel"):
            return {"error": "message_not_found"}
        if message.bot_id != BOT_ID:  # a bot token deletes only its own messages
            return {"error": "cant_delete_message"}
        del self.messages[message.ts]
        return {"channel": message.channel, "ts": message.ts}

    # Reading conversations

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        """A channel's top-level messages (thread parents and broadcasts included, other replies not),
        newest first: the newest before `latest`, or, given only `oldest`, those just after it."""
        channel = str(args.get("channel", ""))
        if not self._exists(channel):
            return {"error": "channel_not_found"}
        shown = [
            m
            for m in self.messages.values()
            if m.channel == channel and (not m.is_reply or m.subtype == "thread_broadcast")
        ]
        forward = "oldest" in args and "latest" not in args
        page = self._page("conversations.history", args, shown, forward=forward)
        if "error" in page:
            return page
        page["messages"].sort(key=lambda m: Decimal(m["ts"]), reverse=True)
        return page

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        """A thread oldest first, its parent first; a message without replies is a thread of one."""
        channel, ts = str(args.get("channel", "")), str(args.get("ts", ""))
        if not self._exists(channel):
            return {"error": "channel_not_found"}
        parent = self.messages.get(ts)
        if parent is None or parent.channel != channel:
            return {"error": "thread_not_found"}
        if parent.is_reply:  # a reply's ts reads its whole thread
            parent = self.messages.get(str(parent.thread_ts)) or parent
        return self._page("conversations.replies", args, [parent, *self.thread(channel, parent.ts)])

    def _page(
        self, method: str, args: dict[str, Any], messages: list[SlackMessage], *, forward: bool = True
    ) -> dict[str, Any]:
        """One page of `messages` within oldest/latest: from the oldest forward, or from the newest back."""
        bounds: dict[str, Decimal] = {}
        for name in ("oldest", "latest"):
            if name in args:
                try:
                    bounds[name] = Decimal(str(args[name]))
                except InvalidOperation:
                    return {"error": f"invalid_ts_{name}"}
        inclusive = str(args.get("inclusive", "0")).lower() in ("1", "true")
        largest, default = HISTORY_PAGE[method]
        try:
            limit = min(largest, int(args.get("limit") or default))
        except ValueError:
            return {"error": "invalid_arguments"}

        def within(ts: Decimal) -> bool:
            low, high = bounds.get("oldest"), bounds.get("latest")
            if low is not None and (ts < low or (ts == low and not inclusive)):
                return False
            return high is None or ts < high or (ts == high and inclusive)

        ordered = sorted(
            (m for m in messages if within(Decimal(m.ts))), key=lambda m: Decimal(m.ts), reverse=not forward
        )
        start = 0
        if args.get("cursor"):
            try:
                boundary = Decimal(
                    base64.b64decode(str(args["cursor"]), validate=True).decode().split(":")[1]
                )
            except (binascii.Error, UnicodeDecodeError, InvalidOperation):
                return {"error": "invalid_cursor"}
            # The page goes on from the message the cursor names, in the page's direction.
            onward = [boundary <= Decimal(m.ts) if forward else Decimal(m.ts) <= boundary for m in ordered]
            start = onward.index(True) if True in onward else len(ordered)
        page, rest = ordered[start : start + limit], ordered[start + limit :]
        cursor = base64.b64encode(f"next_ts:{rest[0].ts}".encode()).decode() if rest else ""
        return {
            "messages": [m.payload(self.thread(m.channel, m.ts)) for m in page],
            "has_more": bool(rest),
            "response_metadata": {"next_cursor": cursor},
        }

    def _streamed(self, args: dict[str, Any]) -> str:
        text = args.get("markdown_text") or ""
        for chunk in args.get("chunks") or []:
            if chunk.get("type") == "markdown_text":
                text += chunk.get("text", "")
        return text

    def _stream_text_error(self, args: dict[str, Any]) -> dict[str, Any] | None:
        """Slack refuses more than 12,000 characters of markdown_text, or of text in one chunk."""
        if len(args.get("markdown_text") or "") > STREAM_TEXT_LIMIT:
            return {"error": "msg_too_long"}
        if any(len(chunk.get("text") or "") > STREAM_TEXT_LIMIT for chunk in args.get("chunks") or []):
            return {"error": "invalid_chunks"}
        return None

    def _chat_startStream(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self._exists(str(args.get("channel", ""))):
            return {"error": "channel_not_found"}
        if not args.get("thread_ts"):
            return {"error": "invalid_arguments"}
        if self.channel_type(args["channel"]) != "im":  # outside DMs Slack must know who reads along
            if not args.get("recipient_user_id"):
                return {"error": "missing_recipient_user_id"}
            if not args.get("recipient_team_id"):
                return {"error": "missing_recipient_team_id"}
        if (refused := self._stream_text_error(args)) is not None:
            return refused
        ts = self._new_ts()
        text = self._streamed(args)
        self.messages[ts] = SlackMessage(args["channel"], ts, args["thread_ts"], text, streaming=True)
        self._replied(args["channel"], args["thread_ts"])
        return {"channel": args["channel"], "ts": ts}

    def _chat_appendStream(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(args.get("ts", ""))
        if message is None or not message.streaming:
            return {"error": "message_not_in_streaming_state"}
        if (refused := self._stream_text_error(args)) is not None:
            return refused
        message.text += self._streamed(args)
        return {"channel": message.channel, "ts": message.ts}

    def _chat_stopStream(self, args: dict[str, Any]) -> dict[str, Any]:
        blocks = _blocks(args)
        if isinstance(blocks, str):
            return {"error": blocks}
        body = self._chat_appendStream(args)
        if "error" not in body:
            self.messages[args["ts"]].streaming = False
            self.messages[args["ts"]].blocks = blocks  # rendered under the finished text
        return body

    # Response URLs and files

    async def _respond(self, request: web.Request) -> web.Response:
        self.responses.append(await request.json())
        return web.Response(text="ok")

    async def _file(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.bot_token}":
            return web.Response(status=403)
        if self.scopes is not None and "files:read" not in self.scopes:
            return web.Response(status=403)
        data = self.files.get(request.match_info["name"])
        return web.Response(body=data) if data is not None else web.Response(status=404)


def _blocks(args: dict[str, Any]) -> list[dict[str, Any]] | str:
    """A message's blocks as sent (a JSON string in a form body), or the error Slack answers them with."""
    blocks = args.get("blocks") or []
    if isinstance(blocks, str):
        try:
            blocks = json.loads(blocks)
        except ValueError:
            return "invalid_blocks_format"
    if not isinstance(blocks, list):
        return "invalid_blocks_format"
    return "invalid_blocks" if _blocks_problem(blocks) else blocks


def _view_problem(view: dict[str, Any]) -> str | None:
    """What Slack refuses in a modal view: its type, title, buttons, callback_id, private_metadata,
    and its blocks (at most 100; inputs with a plain-text label and a plain_text_input)."""
    if view.get("type") != "modal":
        return "type must be modal"
    for name, limit in (("title", 24), ("submit", 24), ("close", 24)):
        text = view.get(name)
        if text is None and name != "title":
            continue
        if not isinstance(text, dict) or text.get("type") != "plain_text":
            return f"{name} must be a plain_text object"
        if not 1 <= len(text.get("text") or "") <= limit:
            return f"{name} must be between 1 and {limit} characters"
    if len(view.get("callback_id") or "") > 255:
        return "callback_id must be at most 255 characters"
    if len(view.get("private_metadata") or "") > 3000:
        return "private_metadata must be at most 3000 characters"
    blocks = view.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 100:
        return "blocks must be a list of 1 to 100 blocks"
    inputs = [block for block in blocks if block.get("type") == "input"]
    if inputs and view.get("submit") is None:
        return "a view with input blocks must have a submit button"
    if len({block.get("block_id") for block in blocks}) < len(blocks):
        return "block_id must be unique"
    for block in blocks:
        if block.get("type") != "input":
            return f"block type {block.get('type')!r}"  # none other is sent here
        label, element = block.get("label") or {}, block.get("element") or {}
        if label.get("type") != "plain_text" or not 1 <= len(label.get("text") or "") <= 2000:
            return "an input's label must be plain_text of 1 to 2000 characters"
        if len(block.get("block_id") or "") > 255 or len(element.get("action_id") or "") > 255:
            return "block_id and action_id must be at most 255 characters"
        if element.get("type") != "plain_text_input":
            return f"element type {element.get('type')!r}"
        high = element.get("max_length", 3000)
        if not 1 <= high <= 3000 or not 0 <= element.get("min_length", 0) <= 3000:
            return "max_length must be between 1 and 3000"
        if len(element.get("initial_value") or "") > high:
            return "initial_value must be at most max_length characters"
    return None


def _blocks_problem(blocks: list[Any]) -> str | None:
    """What Block Kit refuses in a message (the limits Slack documents for each block and element)."""
    if len(blocks) > 50:
        return "more than 50 blocks"
    block_ids: set[str] = set()
    action_ids: set[str] = set()
    for block in blocks:
        block_id = block.get("block_id")
        if block_id is not None:
            if len(block_id) > 255 or block_id in block_ids:
                return f"block_id {block_id!r}"
            block_ids.add(block_id)
        if block.get("type") == "section":
            text = (block.get("text") or {}).get("text") or ""
            if not 1 <= len(text) <= 3000:
                return "section text"
        elif block.get("type") == "actions":
            elements = block.get("elements") or []
            if not 1 <= len(elements) <= 25:
                return "actions elements"
            for element in elements:
                action_id = element.get("action_id") or ""
                if len(action_id) > 255 or (action_id and action_id in action_ids):
                    return f"action_id {action_id!r}"
                action_ids.add(action_id)
                if problem := _element_problem(element):
                    return problem
        else:
            return f"block type {block.get('type')!r}"  # none other is sent here
    return None


def _element_problem(element: dict[str, Any]) -> str | None:
    if element.get("type") == "button":
        text = element.get("text") or {}
        if text.get("type") != "plain_text" or not 1 <= len(text.get("text") or "") <= 75:
            return "button text"
        if len(element.get("value") or "") > 2000:
            return "button value"
        return None
    if element.get("type") == "static_select":
        options = element.get("options") or []
        if not 1 <= len(options) <= 100:
            return "select options"
        if len((element.get("placeholder") or {}).get("text") or "") > 150:
            return "select placeholder"
        for option in options:
            if not 1 <= len((option.get("text") or {}).get("text") or "") <= 75:
                return "option text"
            if not 1 <= len(option.get("value") or "") <= 150:
                return "option value"
        return None
    return f"element type {element.get('type')!r}"


def signed_headers(body: str | bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends with an HTTP delivery, signed the way Slack signs them."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + raw, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


def _offset(tz: str) -> int:
    """Seconds east of UTC now in `tz`, as users.info's tz_offset gives it."""
    offset = datetime.now(ZoneInfo(tz)).utcoffset()
    return int(offset.total_seconds()) if offset else 0
