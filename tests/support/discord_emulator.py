"""A loopback Discord: enough REST and gateway for the real discord.py client to log in, read and reply.

    async with DiscordEmulator() as discord_api:
        settings = Settings(discord_token="t", discord_api_base=discord_api.api_base,
                            discord_gateway_url=discord_api.gateway_url, ...)
        ...start the adapter...
        await discord_api.ready.wait()
        await discord_api.send_message(CHANNEL, "<@BOT> hello", author=ALICE)

With `token=`, REST calls without `Authorization: Bot TOKEN` get Discord's 401, as a bad token does.
Every REST call is recorded (`calls`), sends and edits per channel are timestamped so a test can check a
rate budget, and `fail_next(method, path_fragment, status)` injects one error (429 carries `Via` and a
JSON `retry_after`, as Discord's do).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.support.loopback import serve_app

BOT_ID = 100_000_000_000_000_000 + 900
APP_ID = 100_000_000_000_000_000 + 901
GUILD_ID = 100_000_000_000_000_000 + 100
GENERAL = 100_000_000_000_000_000 + 200
RANDOM = 100_000_000_000_000_000 + 201
THREAD = 100_000_000_000_000_000 + 210
DM_CHANNEL = 100_000_000_000_000_000 + 300
ALICE = {"id": str(100_000_000_000_000_000 + 1001), "username": "alice", "global_name": "Alice"}
BOB = {"id": str(100_000_000_000_000_000 + 1002), "username": "bob", "global_name": "Bob"}
MANAGER_ROLE = 100_000_000_000_000_000 + 500
MANAGE_CHANNELS = 1 << 4
# Message content intent granted (limited, as for an unverified bot).
MESSAGE_CONTENT_LIMITED = 1 << 19


def _user(data: dict[str, Any], bot: bool = False) -> dict[str, Any]:
    return {"discriminator": "0", "avatar": None, "bot": bot, "public_flags": 0, "global_name": None, **data}


BOT_USER = _user({"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}, bot=True)


@dataclass
class Call:
    method: str
    path: str
    json: Any
    at: float


@dataclass
class Fault:
    method: str
    fragment: str
    status: int
    retry_after: float = 0.3


@dataclass
class _State:
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)


class DiscordEmulator:
    def __init__(
        self,
        *,
        message_content: bool = True,
        bucket: tuple[int, float] | None = None,
        token: str | None = None,
    ) -> None:
        self.state = _State()
        # With `token`, REST calls that do not carry it as `Bot TOKEN` get Discord's 401.
        self.token = token
        self.ready = asyncio.Event()
        self.app_flags = MESSAGE_CONTENT_LIMITED if message_content else 0
        # With `bucket=(requests, seconds)`, message sends and edits beyond it per channel get a 429.
        self.bucket = bucket
        self.rate_limited = 0
        self._ids = itertools.count(100_000_000_000_000_000 + 10_000)
        self._sequence = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._runner: web.AppRunner | None = None
        self.files: dict[str, bytes] = {}
        self.port = 0

    # What tests read

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def calls(self) -> list[Call]:
        return self.state.calls

    def messages_in(self, channel: int) -> list[dict[str, Any]]:
        return [m for m in self.state.messages.values() if m["channel_id"] == str(channel)]

    def writes(self, channel: int) -> list[Call]:
        """Sends and edits of messages in one channel: what Discord's per-channel bucket counts."""
        prefix = f"/api/v10/channels/{channel}/messages"
        return [c for c in self.calls if c.path.startswith(prefix) and c.method in ("POST", "PATCH")]

    def fail_next(self, method: str, fragment: str, status: int, retry_after: float = 0.3) -> None:
        self.state.faults.append(Fault(method, fragment, status, retry_after))

    # What tests do

    async def send_message(
        self,
        channel: int,
        content: str,
        *,
        author: dict[str, Any] = ALICE,
        mentions: list[dict[str, Any]] | None = None,
        guild: bool = True,
        referenced: dict[str, Any] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        bot: bool = False,
        message_type: int = 0,
    ) -> str:
        message_id = str(next(self._ids))
        data: dict[str, Any] = {
            "id": message_id,
            "channel_id": str(channel),
            "author": _user(author, bot=bot),
            "content": content,
            "timestamp": "2026-11-22T12:00:00+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [_user(m, bot=m["id"] == str(BOT_ID)) for m in mentions or []],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": [],
            "pinned": False,
            "type": message_type,
            "flags": 0,
        }
        if guild:
            data["guild_id"] = str(GUILD_ID)
            data["member"] = self._member(author)
        if referenced is not None:
            data["message_reference"] = {"message_id": referenced["id"], "channel_id": str(channel)}
            data["referenced_message"] = referenced
        await self.dispatch("MESSAGE_CREATE", data)
        return message_id

    async def interact(
        self,
        name: str,
        options: list[dict[str, Any]],
        *,
        channel: int = GENERAL,
        user: dict[str, Any] = ALICE,
        autocomplete: bool = False,
        manager: bool = False,
    ) -> str:
        interaction_id = str(next(self._ids))
        data = {
            "id": interaction_id,
            "application_id": str(APP_ID),
            "type": 4 if autocomplete else 2,
            "token": f"token-{interaction_id}",
            "version": 1,
            "guild_id": str(GUILD_ID),
            "channel_id": str(channel),
            "channel": {
                "id": str(channel),
                "type": 11 if channel == THREAD else 0,
                "guild_id": str(GUILD_ID),
            },
            "member": {**self._member(user, manager), "permissions": str(MANAGE_CHANNELS if manager else 0)},
            "app_permissions": str((1 << 53) - 1),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(GUILD_ID)},
            "context": 0,
            "attachment_size_limit": 10_485_760,
            "data": {"id": str(800_000 + sum(map(ord, name))), "name": name, "type": 1, "options": options},
        }
        await self.dispatch("INTERACTION_CREATE", data)
        return interaction_id

    def interaction_responses(self, interaction_id: str) -> list[Call]:
        token = f"token-{interaction_id}"
        return [c for c in self.calls if interaction_id in c.path or token in c.path]

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        payload = json.dumps({"op": 0, "t": event, "s": next(self._sequence), "d": data})
        for socket in self._sockets:
            await socket.send_str(payload)

    # The server

    async def __aenter__(self) -> DiscordEmulator:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{name}", self._attachment)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner, self.port = await serve_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for socket in self._sockets:
            await socket.close()
        assert self._runner is not None
        await self._runner.cleanup()

    def _member(self, user: dict[str, Any], manager: bool = False) -> dict[str, Any]:
        roles = [str(MANAGER_ROLE)] if manager else []
        return {
            "user": _user(user),
            "roles": roles,
            "joined_at": "2026-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
        }

    def _guild(self) -> dict[str, Any]:
        def text_channel(channel_id: int, name: str) -> dict[str, Any]:
            return {
                "id": str(channel_id),
                "type": 0,
                "name": name,
                "position": channel_id,
                "guild_id": str(GUILD_ID),
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
            }

        thread = {
            "id": str(THREAD),
            "type": 11,
            "name": "a thread",
            "guild_id": str(GUILD_ID),
            "parent_id": str(GENERAL),
            "owner_id": ALICE["id"],
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": "2026-11-22T12:00:00+00:00",
                "locked": False,
            },
            "message_count": 0,
            "member_count": 1,
        }
        everyone = {
            "id": str(GUILD_ID),
            "name": "@everyone",
            "permissions": str(1024 | 2048 | 65536),
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        managers = {
            **everyone,
            "id": str(MANAGER_ROLE),
            "name": "managers",
            "position": 1,
            "permissions": str(MANAGE_CHANNELS | 1024 | 2048),
        }
        return {
            "id": str(GUILD_ID),
            "name": "Test guild",
            "icon": None,
            "owner_id": str(100_000_000_000_000_000 + 999),
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [everyone, managers],
            "channels": [text_channel(GENERAL, "general"), text_channel(RANDOM, "random")],
            "threads": [thread],
            "members": [{**self._member(BOT_USER), "user": BOT_USER}],
            "member_count": 3,
            "large": False,
            "unavailable": False,
            "voice_states": [],
            "presences": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "system_channel_flags": 0,
        }

    def attachment(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """An attachment payload whose file this emulator serves."""
        self.files[name] = data
        return {
            "id": str(next(self._ids)),
            "filename": name,
            "size": len(data),
            "url": f"http://127.0.0.1:{self.port}/attachments/{name}",
            "proxy_url": f"http://127.0.0.1:{self.port}/attachments/{name}",
            "content_type": content_type,
        }

    async def _attachment(self, request: web.Request) -> web.Response:
        return web.Response(body=self.files[request.match_info["name"]])

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 45000}}))
        async for frame in socket:
            if frame.type != WSMsgType.TEXT:
                continue
            payload = json.loads(frame.data)
            if payload["op"] == 1:
                await socket.send_str(json.dumps({"op": 11}))
            elif payload["op"] == 2:
                ready = {
                    "v": 10,
                    "user": BOT_USER,
                    "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
                    "session_id": "session",
                    "resume_gateway_url": self.gateway_url,
                    "application": {"id": str(APP_ID), "flags": self.app_flags},
                }
                await self.dispatch("READY", ready)
                await self.dispatch("GUILD_CREATE", self._guild())
                self.ready.set()
        self._sockets.remove(socket)
        return socket

    async def _rest(self, request: web.Request) -> web.Response:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json":
                body = json.loads(raw)
            elif request.content_type.startswith("multipart/"):
                body = {"multipart": True}
        path = request.path
        self.state.calls.append(Call(request.method, path, body, time.monotonic()))
        in_path = path.startswith(("/api/v10/interactions/", "/api/v10/webhooks/"))  # the token is in the URL
        if (
            self.token is not None
            and not in_path
            and request.headers.get("Authorization") != f"Bot {self.token}"
        ):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        if self.bucket is not None and "/messages" in path and request.method in ("POST", "PATCH"):
            channel_prefix = path.split("/messages")[0] + "/messages"
            limit, window = self.bucket
            now = time.monotonic()
            recent = [
                c
                for c in self.calls[:-1]
                if c.path.startswith(channel_prefix) and c.method in ("POST", "PATCH")
            ]
            if sum(1 for c in recent if now - c.at < window) >= limit:
                self.calls.pop()  # a refused request does not count against the bucket
                self.rate_limited += 1
                body = {"message": "You are being rate limited.", "retry_after": 1.0, "global": False}
                return _json(body, 429, {"Via": "1.1 google", "Retry-After": "1"})
        for fault in list(self.state.faults):
            if fault.method == request.method and fault.fragment in path:
                self.state.faults.remove(fault)
                if fault.status == 429:
                    return _json(
                        {
                            "message": "You are being rate limited.",
                            "retry_after": fault.retry_after,
                            "global": False,
                        },
                        429,
                        {"Via": "1.1 google", "Retry-After": "1"},
                    )
                return _json({"message": "Injected failure", "code": 0}, fault.status)
        return await self._route(request.method, path.removeprefix("/api/v10"), body)

    async def _route(self, method: str, path: str, body: Any) -> web.Response:
        parts = path.strip("/").split("/")
        if path == "/users/@me":
            return _json(BOT_USER)
        if path in ("/oauth2/applications/@me", "/applications/@me"):
            return _json(
                {
                    "id": str(APP_ID),
                    "name": "Parley",
                    "icon": None,
                    "description": "",
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "verify_key": "k",
                    "flags": self.app_flags,
                    "owner": _user(ALICE),
                    "team": None,
                    "summary": "",
                }
            )
        if parts[0] == "channels" and parts[-1] == "typing":
            return web.Response(status=204)
        if parts[0] == "channels" and len(parts) == 3 and method == "POST":
            return _json(self._store_message(parts[1], body or {}))
        if parts[0] == "channels" and len(parts) == 4 and method == "PATCH":
            message = self.state.messages[parts[3]]
            message.update({k: v for k, v in (body or {}).items() if k in ("content", "allowed_mentions")})
            message["edited_timestamp"] = "2026-11-22T12:00:01+00:00"
            return _json(message)
        if parts[0] == "applications" and parts[-1] == "commands" and method == "PUT":
            return _json(
                [
                    {**c, "id": str(800_000 + i), "application_id": str(APP_ID), "version": "1"}
                    for i, c in enumerate(body or [])
                ]
            )
        if parts[0] == "applications" and parts[-1] == "commands":
            return _json([])
        if parts[0] == "interactions":  # /interactions/{id}/{token}/callback
            response_type = (body or {}).get("type")
            return _json(
                {
                    "interaction": {
                        "id": parts[1],
                        "type": 2,
                        "response_message_loading": response_type == 5,
                        "response_message_ephemeral": bool(
                            ((body or {}).get("data") or {}).get("flags", 0) & 64
                        ),
                    }
                }
            )
        if parts[0] == "webhooks":  # edits of the original response and follow-ups
            channel = str(GENERAL)
            if len(parts) >= 5 and parts[4] == "@original" and method == "PATCH":
                original = self.state.messages.setdefault(
                    f"original-{parts[2]}", self._new_message(channel, {})
                )
                original.update(
                    {k: v for k, v in (body or {}).items() if k in ("content", "allowed_mentions", "flags")}
                )
                return _json(original)
            if method == "POST":
                return _json(self._store_message(channel, body or {}))
            if method == "PATCH":
                message = self.state.messages[parts[-1]]
                message.update(
                    {k: v for k, v in (body or {}).items() if k in ("content", "allowed_mentions")}
                )
                return _json(message)
        return _json({"message": f"unknown route {method} {path}", "code": 0}, 404)

    def _new_message(self, channel: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": str(next(self._ids)),
            "channel_id": channel,
            "guild_id": str(GUILD_ID),
            "author": BOT_USER,
            "content": body.get("content", ""),
            "timestamp": "2026-11-22T12:00:00+00:00",
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": body.get("flags", 0),
            "allowed_mentions": body.get("allowed_mentions"),
        }

    def _store_message(self, channel: str, body: dict[str, Any]) -> dict[str, Any]:
        message = self._new_message(channel, body)
        if body.get("message_reference"):  # absent, not null, when there is none: discord.py reads it so
            message["message_reference"] = {"channel_id": channel, **body["message_reference"]}
        self.state.messages[message["id"]] = message
        return message


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py reads JSON only when the Content-Type is exactly application/json.
    headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(data).encode(), status=status, headers=headers)
