"""A loopback Discord: enough REST and gateway for the real discord.py client to log in, read and reply.

    async with DiscordEmulator() as discord_api:
        settings = Settings(discord_token="t", discord_api_base=discord_api.api_base,
                            discord_gateway_url=discord_api.gateway_url, ...)
        async with running(discord_api, engine) as platform:  # started as `parley run` starts it
            await discord_api.send_message(CHANNEL, "<@BOT> hello", author=ALICE)

It refuses what Discord refuses (checked against Discord's API docs and OpenAPI spec):

- the gateway closes with 4014 when IDENTIFY asks for a privileged intent the application lacks;
- message sends and edits, in channels and through interaction webhooks, over 2,000 characters (50035)
  or empty (50006); edits of a message that is not there or not the bot's;
- command registrations with bad names, descriptions, option order, or more than 25 options or choices,
  and autocomplete answers with more than 25 choices or a choice name or value over 100 characters;
- an interaction answered after 3 seconds (10062) or twice (40060); its token after 15 minutes (50027);
  a callback type the interaction cannot take (a component's: 4, 5, 6, 7 or 9);
- message components that break Discord's rules: more than 5 action rows, a row of more than 5 buttons
  or of a select beside anything, a button without a custom id (1–100 characters) or with a label over
  80, a string select with no options or more than 25, option labels and values over 100 characters, a
  placeholder over 150, custom ids used twice in one message. `click(message_id, custom_id)` sends a
  component interaction (type 3) only for a component the message shows, with values its select offers;
- reading history (GET /channels/{channel}/messages) with a limit outside 1–100, more than one of
  before/after/around, an id that is not a snowflake or a parameter it does not take; without View
  Channel it answers 50001, without Read Message History an empty page, as Discord documents;
- deleting another person's message (50013), and editing an ephemeral message through the channel;
- more than 5 requests per 5 s in one bucket, answering 429 with `Via`, `Retry-After` and a JSON
  `retry_after`. Buckets are per route and top-level resource, as Discord's are: message creates and
  edits per channel, webhook executes and edits per interaction token. Every limited response carries
  `X-RateLimit-*` headers.

Its gateway is sharded as Discord's is (`DiscordEmulator(shards=2, max_concurrency=1)`, also what
`GET /gateway/bot` says): each server's events go only to the session identified with its shard,
`(guild_id >> 22) % shard_count` (GUILD_ID is on shard 0 of 2, OTHER_GUILD with its channel ELSEWHERE
on shard 1), and events without a server (direct messages) to shard 0. It closes an IDENTIFY with a shard
outside [0, shard_count) or another shard count (4010) and one without a shard when sharding is required
(4011); with `max_concurrency` given, it answers Invalid Session (op 9) to an IDENTIFY within 5 seconds
of the last in its bucket (`shard_id % max_concurrency`), recording it in `identify_refusals`; and it
closes the older session when a second identifies with the same shard (4009), so no shard's events
reach two sessions. A RESUME gets Invalid Session: a new session must start.

It keeps everyone's messages, as a channel does, and serves them newest first a page at a time; ids
are snowflakes made as Discord makes them (the time in the high bits). `deliver_again` replays a
MESSAGE_CREATE, as a client can see one after a gateway resume; `edit_message` and `delete_message`
are a person's edits and deletions, as MESSAGE_UPDATE and MESSAGE_DELETE tell them.

With `token=`, REST calls without `Authorization: Bot TOKEN` get Discord's 401, as a bad token does.
Every REST call is recorded (`calls`, with the status it got), and `fail_next(method, path_fragment,
status)` injects one error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from adapters.discord.port import DiscordPlatform
from bot.engine import Engine
from tests.support.loopback import serve_app

BOT_ID = 100_000_000_000_000_000 + 900
APP_ID = 100_000_000_000_000_000 + 901
GUILD_ID = 100_000_000_000_000_000 + 100
GENERAL = 100_000_000_000_000_000 + 200
RANDOM = 100_000_000_000_000_000 + 201
THREAD = 100_000_000_000_000_000 + 210  # a thread under GENERAL
ROOMS = [100_000_000_000_000_000 + 220 + n for n in range(10)]  # more text channels: room-0 … room-9
DM_CHANNEL = 100_000_000_000_000_000 + 300
# A second server, on the other shard when there are two ((id >> 22) % 2: GUILD_ID is on shard 0), with
# one text channel.
OTHER_GUILD = GUILD_ID + (1 << 22)
ELSEWHERE = OTHER_GUILD + 200
ALICE = {"id": str(100_000_000_000_000_000 + 1001), "username": "alice", "global_name": "Alice"}
BOB = {"id": str(100_000_000_000_000_000 + 1002), "username": "bob", "global_name": "Bob"}
MANAGER_ROLE = 100_000_000_000_000_000 + 500

# Permission bits
MANAGE_CHANNELS = 1 << 4
ADMINISTRATOR = 1 << 3
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
READ_MESSAGE_HISTORY = 1 << 16
ALL_PERMISSIONS = (1 << 53) - 1

# Application flags and the privileged gateway intents they allow (each: the full and the limited flag).
GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19
MESSAGE_CONTENT_LIMITED = GATEWAY_MESSAGE_CONTENT_LIMITED  # granted, as for an unverified bot
PRIVILEGED_INTENTS = {
    1 << 1: (1 << 14) | (1 << 15),  # GUILD_MEMBERS: GATEWAY_GUILD_MEMBERS(_LIMITED)
    1 << 8: (1 << 12) | (1 << 13),  # GUILD_PRESENCES: GATEWAY_PRESENCE(_LIMITED)
    1 << 15: (1 << 18) | (1 << 19),  # MESSAGE_CONTENT: GATEWAY_MESSAGE_CONTENT(_LIMITED)
}

MESSAGE_LIMIT = 2000
DISCORD_EPOCH_MS = 1_420_070_400_000
HISTORY_DEFAULT, HISTORY_MAX = 50, 100  # GET /channels/{channel}/messages: limit 1–100, 50 when not given
EPHEMERAL = 1 << 6
LOADING = 1 << 7
INITIAL_RESPONSE_SECONDS = 3.0
TOKEN_SECONDS = 15 * 60.0
# Requests per window in each bucket. Discord does not document these; they are what its headers report
# for message writes, and what Parley is built to stay within.
RATE_LIMITS: dict[str, tuple[int, float]] = {
    "create": (5, 5.0),  # POST /channels/{channel}/messages
    "edit": (5, 5.0),  # PATCH /channels/{channel}/messages/{message}
    "delete": (5, 5.0),  # DELETE /channels/{channel}/messages/{message}
    "webhook-create": (5, 5.0),  # POST /webhooks/{application}/{token}
    "webhook-edit": (5, 5.0),  # PATCH /webhooks/{application}/{token}/messages/{message}
}

Handler = Callable[[re.Match[str], Any], Awaitable[web.Response]]

IDENTIFY_SECONDS = 5.0  # max_concurrency IDENTIFYs per 5 seconds, one per bucket (shard % max_concurrency)
# Close codes: an invalid shard, sharding required, and (our choice) a session another IDENTIFY of the
# same shard replaced: Discord keeps one session per shard and ends the older.
INVALID_SHARD, SHARDING_REQUIRED, REPLACED = 4010, 4011, 4009


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard a server's events go to, as Discord routes them."""
    return (guild_id >> 22) % shard_count


@dataclass
class _Session:
    """One gateway connection; its shard once it has identified."""

    socket: web.WebSocketResponse
    shard: tuple[int, int] | None = None
    session_id: str = ""
    sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


@dataclass(frozen=True)
class Route:
    """One REST route, matched against the path after /api/v10.

    A rate-limited route names its `bucket` and which group of the path holds the bucket's top-level
    resource (a channel, or an interaction webhook's token)."""

    method: str
    path: str
    handler: Handler
    bucket: str | None = None
    resource: int = 1
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(self.path))


def _user(data: dict[str, Any], bot: bool = False) -> dict[str, Any]:
    return {"discriminator": "0", "avatar": None, "bot": bot, "public_flags": 0, "global_name": None, **data}


BOT_USER = _user({"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}, bot=True)


def overwrite(target: int | str, *, allow: int = 0, deny: int = 0, member: bool = False) -> dict[str, Any]:
    """A channel permission overwrite for a role (or, with `member`, one person)."""
    return {"id": str(target), "type": 1 if member else 0, "allow": str(allow), "deny": str(deny)}


@dataclass
class Call:
    method: str
    path: str
    json: Any
    at: float
    status: int = 0  # what the emulator answered
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    method: str
    fragment: str
    status: int
    retry_after: float = 0.3


@dataclass
class Interaction:
    """One interaction as Discord tracks it: who may still answer it, and how."""

    id: str
    token: str
    channel: str
    autocomplete: bool
    created: float
    response: int | None = None  # the callback type it was answered with
    original: str | None = None  # the original response's message id
    original_done: bool = False  # sent or edited with content: follow-ups then create new messages
    followups: set[str] = field(default_factory=set)
    message: str | None = None  # a component interaction's message, the one clicked
    modal_submit: bool = False  # a MODAL_SUBMIT, which cannot be answered with another modal
    modal: dict[str, Any] | None = None  # the modal it was answered with (callback type 9)


@dataclass
class _Window:
    start: float
    count: int = 0


@dataclass
class _State:
    calls: list[Call] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # everyone's, by id
    faults: list[Fault] = field(default_factory=list)
    interactions: dict[str, Interaction] = field(default_factory=dict)
    # MESSAGE_CREATE and component INTERACTION_CREATE payloads sent, by id: `deliver_again` replays them.
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)  # the synced slash commands, by name


class DiscordEmulator:
    def __init__(
        self,
        *,
        message_content: bool = True,
        limits: dict[str, tuple[int, float]] | None = None,
        initial_response_seconds: float = INITIAL_RESPONSE_SECONDS,
        token_seconds: float = TOKEN_SECONDS,
        token: str | None = None,
        shards: int = 1,
        max_concurrency: int | None = None,
    ) -> None:
        self.state = _State()
        # The shard count the bot must run with (what GET /gateway/bot recommends), and how many shards
        # may IDENTIFY in one 5-second window (one per bucket, `shard % max_concurrency`). Without
        # `max_concurrency` IDENTIFYs are not counted (GET /gateway/bot says 1): tests that start Parley
        # again within seconds, as no bot on Discord could, stay quick.
        self.shards = shards
        self.max_concurrency = max_concurrency
        self.identifies: list[tuple[int, float]] = []  # (shard, monotonic time) of IDENTIFYs accepted
        self.identify_refusals: list[tuple[int, str]] = []  # (shard, why) of IDENTIFYs refused
        # With `token`, REST calls that do not carry it as `Bot TOKEN` get Discord's 401.
        self.token = token
        self.ready = asyncio.Event()
        self.app_flags = MESSAGE_CONTENT_LIMITED if message_content else 0
        self.limits = dict(RATE_LIMITS if limits is None else limits)
        self.initial_response_seconds = initial_response_seconds
        self.token_seconds = token_seconds
        self.overwrites: dict[int, list[dict[str, Any]]] = {}
        self.rate_limited = 0
        self.closed_with: list[int] = []  # gateway close codes sent
        self.identify_refused: int | None = None  # a close code to answer IDENTIFY with (4004: bad token)
        self.hold_ready = False  # never answer IDENTIFY
        self._windows: dict[tuple[str, str], _Window] = {}
        self._last_id = 0
        self._sessions: list[_Session] = []
        self._session_ids = itertools.count(1)
        self._bucket_starts: dict[int, float] = {}  # by bucket, the last IDENTIFY accepted
        self._runner: web.AppRunner | None = None
        self._routes = self._route_table()
        self.files: dict[str, bytes] = {}
        self.file_delays: dict[str, float] = {}
        self.downloads: list[str] = []  # the files fetched, by name
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
        """The bot's messages in a channel, interaction responses included, oldest first."""
        return [
            m
            for m in self.state.messages.values()
            if m["channel_id"] == str(channel) and m["author"]["id"] == str(BOT_ID)
        ]

    def replies_to(self, message_id: str) -> list[dict[str, Any]]:
        """The bot's messages that answer one message (a reply's first message references it)."""
        return [
            m
            for m in self.state.messages.values()
            if str((m.get("message_reference") or {}).get("message_id")) == message_id
        ]

    def writes(self, channel: int) -> list[Call]:
        """Sends and edits of messages in one channel that Discord accepted."""
        prefix = f"/api/v10/channels/{channel}/messages"
        return [
            c
            for c in self.calls
            if c.path.startswith(prefix) and c.method in ("POST", "PATCH") and c.status < 300
        ]

    def fail_next(self, method: str, fragment: str, status: int, retry_after: float = 0.3) -> None:
        self.state.faults.append(Fault(method, fragment, status, retry_after))

    def interaction_responses(self, interaction_id: str) -> list[Call]:
        token = f"token-{interaction_id}"
        return [c for c in self.calls if interaction_id in c.path or token in c.path]

    def original_response(self, interaction_id: str) -> dict[str, Any] | None:
        original = self.state.interactions[interaction_id].original
        return self.state.messages[original] if original else None

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
        roles: list[int] | None = None,
    ) -> str:
        message_id = self.snowflake()
        data: dict[str, Any] = {
            "id": message_id,
            "channel_id": str(channel),
            "author": _user(author, bot=bot),
            "content": content,
            "timestamp": _timestamp(message_id),
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
            data["guild_id"] = str(OTHER_GUILD if channel == ELSEWHERE else GUILD_ID)
            data["member"] = self._member(author, roles)
        if referenced is not None:
            data["message_reference"] = {"message_id": referenced["id"], "channel_id": str(channel)}
            data["referenced_message"] = referenced
        # Kept as Discord keeps a message: no guild or member in what GET .../messages returns.
        self.state.messages[message_id] = {
            k: v for k, v in data.items() if k not in ("guild_id", "member", "referenced_message")
        }
        self.state.events[message_id] = data
        await self.dispatch("MESSAGE_CREATE", data)
        return message_id

    async def deliver_again(self, message_id: str) -> None:
        """The same MESSAGE_CREATE (or a click's INTERACTION_CREATE) once more, as a client can see it
        after a gateway resume."""
        event = self.state.events[message_id]
        await self.dispatch("INTERACTION_CREATE" if event.get("type") == 3 else "MESSAGE_CREATE", event)

    async def close_gateway(self, code: int) -> None:
        """Close every gateway connection with `code` (4004: the token was revoked)."""
        for session in list(self._sessions):
            self.closed_with.append(code)
            await session.socket.close(code=code, message=b"Closed by the test.")

    def snowflake(self) -> str:
        """A new id, made as Discord makes them: milliseconds since 2015 in the high bits, so it tells
        when the message was sent and ids sort by time."""
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last_id = max(now, self._last_id + 1)
        return str(self._last_id)

    async def interact(
        self,
        name: str,
        options: list[dict[str, Any]],
        *,
        channel: int = GENERAL,
        user: dict[str, Any] = ALICE,
        autocomplete: bool = False,
        manager: bool = False,
        roles: list[int] | None = None,
    ) -> str:
        """Dispatch a slash command (or an autocomplete request); its 3 seconds start now.

        Once commands are synced, Discord sends only theirs, and autocomplete requests only for an
        option registered with autocomplete."""
        if self.state.commands:
            assert name in self.state.commands, f"no /{name} was synced"
            if autocomplete:
                registered = {o["name"]: o for o in self.state.commands[name].get("options", [])}
                (focused,) = [o["name"] for o in options if o.get("focused")]
                assert registered[focused].get("autocomplete"), f"/{name} {focused} has no autocomplete"
        roles = roles if roles is not None else ([MANAGER_ROLE] if manager else [])
        data = self._interaction(4 if autocomplete else 2, channel, user, roles)
        interaction_id = data["id"]
        data["data"] = {"id": str(800_000 + sum(map(ord, name))), "name": name, "type": 1, "options": options}
        self.state.interactions[interaction_id] = Interaction(
            interaction_id, data["token"], str(channel), autocomplete, time.monotonic()
        )
        await self.dispatch("INTERACTION_CREATE", data)
        return interaction_id

    async def click(
        self,
        message_id: str,
        custom_id: str,
        *,
        user: dict[str, Any] = ALICE,
        values: list[str] | None = None,
        manager: bool = False,
    ) -> str:
        """Someone uses a component a message shows (a button, or a select with `values`); Discord sends
        the interaction (type 3), and its 3 seconds start now."""
        message = self.state.messages[message_id]
        component = next(
            (
                c
                for row in message.get("components") or []
                for c in row["components"]
                if c.get("custom_id") == custom_id
            ),
            None,
        )
        assert component is not None, f"message {message_id} shows no component {custom_id!r}"
        assert not component.get("disabled"), "a disabled component cannot be used"
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] == 3:
            offered = {option["value"] for option in component["options"]}
            chosen = values or []
            assert set(chosen) <= offered, f"the select offers no {sorted(set(chosen) - offered)}"
            low, high = component.get("min_values", 1), component.get("max_values", 1)
            assert low <= len(chosen) <= high, "Discord enforces the select's min and max values"
            data["values"] = chosen
        channel = int(message["channel_id"])
        payload = self._interaction(3, channel, user, [MANAGER_ROLE] if manager else [])
        interaction_id = payload["id"]
        payload.update(message=message, data=data)
        self.state.interactions[interaction_id] = Interaction(
            interaction_id, payload["token"], str(channel), False, time.monotonic(), message=message_id
        )
        self.state.events[interaction_id] = payload
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction_id

    async def submit_modal(
        self, interaction_id: str, values: dict[str, str], *, user: dict[str, Any] = ALICE
    ) -> str:
        """The person fills in and submits the modal an interaction was answered with; Discord sends a
        MODAL_SUBMIT interaction (type 5) with every field's value, and its 3 seconds start now. Like
        Discord's client, this refuses a submission that leaves a required field empty or breaks a
        field's length limits."""
        shown = self.state.interactions[interaction_id].modal
        assert shown is not None, f"interaction {interaction_id} was not answered with a modal"
        fields = [row["components"][0] for row in shown["components"]]
        assert set(values) <= {f["custom_id"] for f in fields}, "the modal has no such field"
        rows = []
        for field_ in fields:
            value = values.get(field_["custom_id"], field_.get("value") or "")
            assert value or not field_.get("required", True), f"{field_['custom_id']} is required"
            low, high = field_.get("min_length", 0), field_.get("max_length", 4000)
            assert not value or low <= len(value) <= high, f"{field_['custom_id']} breaks its length limits"
            rows.append(
                {"type": 1, "components": [{"type": 4, "custom_id": field_["custom_id"], "value": value}]}
            )
        channel = int(self.state.interactions[interaction_id].channel)
        payload = self._interaction(5, channel, user, [])
        payload["data"] = {"custom_id": shown["custom_id"], "components": rows}
        submitted = payload["id"]
        self.state.interactions[submitted] = Interaction(
            submitted, payload["token"], str(channel), False, time.monotonic(), modal_submit=True
        )
        self.state.events[submitted] = payload
        await self.dispatch("INTERACTION_CREATE", payload)
        return submitted

    async def edit_message(self, message_id: str, content: str) -> None:
        """Its author edits a message, as MESSAGE_UPDATE tells the client (the whole message, edited)."""
        stamp = datetime.now(UTC).isoformat()
        self.state.messages[message_id].update(content=content, edited_timestamp=stamp)
        event = self.state.events[message_id]
        event.update(content=content, edited_timestamp=stamp)
        await self.dispatch("MESSAGE_UPDATE", event)

    async def delete_message(self, channel: int, message_id: str) -> None:
        """Someone deletes their message, as MESSAGE_DELETE tells the client."""
        self.state.messages.pop(message_id, None)
        data = {"id": message_id, "channel_id": str(channel), "guild_id": str(GUILD_ID)}
        await self.dispatch("MESSAGE_DELETE", data)

    async def set_overwrites(self, channel: int, overwrites: list[dict[str, Any]]) -> None:
        """Change a channel's permission overwrites, telling connected clients as Discord does."""
        self.overwrites[channel] = overwrites
        await self.dispatch("CHANNEL_UPDATE", self._text_channel(channel))

    def permissions(self, user_id: str, roles: list[int], channel: int) -> int:
        """A member's permissions in a channel (a thread takes its parent's), as Discord computes them."""
        by_role = {int(role["id"]): int(role["permissions"]) for role in self._roles()}
        base = by_role[GUILD_ID]
        for role in roles:
            base |= by_role.get(role, 0)
        if base & ADMINISTRATOR:
            return ALL_PERMISSIONS
        found = {o["id"]: o for o in self.overwrites.get(GENERAL if channel == THREAD else channel, [])}

        def apply(permissions: int, allow: int, deny: int) -> int:
            return (permissions & ~deny) | allow

        if everyone := found.get(str(GUILD_ID)):
            base = apply(base, int(everyone["allow"]), int(everyone["deny"]))
        role_overwrites = [found[str(role)] for role in roles if str(role) in found]
        allow = deny = 0
        for role_overwrite in role_overwrites:
            allow |= int(role_overwrite["allow"])
            deny |= int(role_overwrite["deny"])
        base = apply(base, allow, deny)
        if personal := found.get(user_id):
            base = apply(base, int(personal["allow"]), int(personal["deny"]))
        return base

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to the session of the shard it belongs to: its server's shard, or shard 0 for
        what has no server (direct messages)."""
        guild = data.get("guild_id")
        for session in list(self._sessions):
            if session.shard is not None and session.shard[0] == shard_of(int(guild or 0), session.shard[1]):
                await self._send(session, event, data)

    def sessions_on(self, shard: int) -> int:
        """How many identified sessions receive shard `shard`'s events (never more than one)."""
        return sum(1 for session in self._sessions if session.shard is not None and session.shard[0] == shard)

    async def _send(self, session: _Session, event: str, data: dict[str, Any]) -> None:
        payload = json.dumps({"op": 0, "t": event, "s": next(session.sequence), "d": data})
        with contextlib.suppress(ConnectionError):  # closing: Discord drops what it cannot send
            await session.socket.send_str(payload)

    def attachment(self, name: str, data: bytes, content_type: str, *, delay: float = 0.0) -> dict[str, Any]:
        """An attachment payload whose file this emulator serves (`delay` seconds late: a big one)."""
        self.files[name] = data
        self.file_delays[name] = delay
        return {
            "id": self.snowflake(),
            "filename": name,
            "size": len(data),
            "url": f"http://127.0.0.1:{self.port}/attachments/{name}",
            "proxy_url": f"http://127.0.0.1:{self.port}/attachments/{name}",
            "content_type": content_type,
        }

    # The server

    async def __aenter__(self) -> DiscordEmulator:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{name}", self._attachment)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner, self.port = await serve_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in list(self._sessions):
            await session.socket.close()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _attachment(self, request: web.Request) -> web.Response:
        self.downloads.append(request.match_info["name"])
        await asyncio.sleep(self.file_delays[request.match_info["name"]])
        return web.Response(body=self.files[request.match_info["name"]])

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        session = _Session(socket)
        self._sessions.append(session)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 45000}}))
        try:
            async for frame in socket:
                if frame.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(frame.data)
                if payload["op"] == 1:
                    await socket.send_str(json.dumps({"op": 11}))
                elif payload["op"] == 2:
                    if not await self._identify(session, payload["d"]):
                        break
                elif payload["op"] == 6:  # RESUME: sessions are not kept, so a new one must start
                    await socket.send_str(json.dumps({"op": 9, "d": False}))
        finally:
            self._sessions.remove(session)
        return socket

    async def _identify(self, session: _Session, identify: dict[str, Any]) -> bool:
        """Start the session, or refuse it as Discord does; False when the connection was closed."""
        socket = session.socket
        if self.hold_ready:
            return True
        if self.identify_refused is not None:
            self.closed_with.append(self.identify_refused)
            await socket.close(code=self.identify_refused, message=b"Authentication failed.")
            return False
        if not self._intents_allowed(int(identify.get("intents", 0))):
            self.closed_with.append(4014)
            await socket.close(code=4014, message=b"Disallowed intent(s).")
            return False
        shard = identify.get("shard", [0, 1])
        problem = self._shard_problem(shard)
        if problem is not None:
            code, why = problem
            self.identify_refusals.append((shard[0] if isinstance(shard, list) and shard else -1, why))
            self.closed_with.append(code)
            await socket.close(code=code, message=why.encode())
            return False
        shard_id, count = shard
        bucket, now = shard_id % (self.max_concurrency or 1), time.monotonic()
        counted = self.max_concurrency is not None
        if counted and now - self._bucket_starts.get(bucket, float("-inf")) < IDENTIFY_SECONDS:
            # Over max_concurrency: Discord answers Invalid Session, and the client identifies later.
            self.identify_refusals.append((shard_id, "identified too soon after another in its bucket"))
            await socket.send_str(json.dumps({"op": 9, "d": False}))
            return True
        self._bucket_starts[bucket] = now
        self.identifies.append((shard_id, now))
        for older in [s for s in self._sessions if s is not session and s.shard and s.shard[0] == shard_id]:
            older.shard = None  # nothing more reaches it
            self.closed_with.append(REPLACED)
            await older.socket.close(code=REPLACED, message=b"Session replaced.")
        session.shard, session.session_id = (shard_id, count), f"session-{next(self._session_ids)}"
        guilds = [g for g in (GUILD_ID, OTHER_GUILD) if shard_of(g, count) == shard_id]
        ready = {
            "v": 10,
            "user": BOT_USER,
            "guilds": [{"id": str(guild), "unavailable": True} for guild in guilds],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(APP_ID), "flags": self.app_flags},
            "shard": [shard_id, count],
        }
        await self._send(session, "READY", ready)
        for guild in guilds:
            await self._send(session, "GUILD_CREATE", self._guild(guild))
        self.ready.set()
        return True

    def _shard_problem(self, shard: Any) -> tuple[int, str] | None:
        """Why Discord would refuse this IDENTIFY's `shard` ([shard_id, shard_count]), if it would."""
        if not (isinstance(shard, list) and len(shard) == 2 and all(isinstance(n, int) for n in shard)):
            return INVALID_SHARD, "Invalid shard."
        shard_id, count = shard
        if count == 1 and self.shards > 1:
            return SHARDING_REQUIRED, "Sharding required."
        if count != self.shards or not 0 <= shard_id < count:
            return INVALID_SHARD, "Invalid shard."
        return None

    def _intents_allowed(self, intents: int) -> bool:
        return all(
            not intents & intent or self.app_flags & flags for intent, flags in PRIVILEGED_INTENTS.items()
        )

    async def _rest(self, request: web.Request) -> web.Response:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json":
                body = json.loads(raw)
            elif request.content_type.startswith("multipart/"):
                body = {"multipart": True}
        call = Call(request.method, request.path, body, time.monotonic(), query=dict(request.query))
        self.state.calls.append(call)
        response = await self._answer(call, request.headers.get("Authorization"))
        call.status = response.status
        return response

    async def _answer(self, call: Call, authorization: str | None) -> web.Response:
        in_path = call.path.startswith(("/api/v10/interactions/", "/api/v10/webhooks/"))  # token in the URL
        if self.token is not None and not in_path and authorization != f"Bot {self.token}":
            return _error(401, 0, "401: Unauthorized")
        for fault in list(self.state.faults):
            if fault.method == call.method and fault.fragment in call.path:
                self.state.faults.remove(fault)
                if fault.status == 429:
                    return _rate_limited(fault.retry_after, {})
                return _error(fault.status, 0, "Injected failure")
        path = call.path.removeprefix("/api/v10")
        for route in self._routes:
            if route.method != call.method or not (match := route.pattern.fullmatch(path)):
                continue
            if route.method == "GET" and call.query:
                if route.handler != self._list_messages:  # no other route here takes a query
                    return _form_error(sorted(call.query)[0], "UNKNOWN_FIELD", "Unknown query parameter")
                return await self._list_messages(match, call.json, call.query)
            if route.bucket is None or route.bucket not in self.limits:
                return await route.handler(match, call.json)
            refused, headers = self._take(route.bucket, match.group(route.resource))
            if refused is not None:
                return refused
            response = await route.handler(match, call.json)
            response.headers.update(headers)
            return response
        return _error(404, 0, f"unknown route {call.method} {path}")

    # Rate limits

    def _take(self, kind: str, resource: str) -> tuple[web.Response | None, dict[str, str]]:
        """Count one request in its bucket: a fixed window that opens with its first request."""
        limit, seconds = self.limits[kind]
        now = time.monotonic()
        window = self._windows.get((kind, resource))
        if window is None or now >= window.start + seconds:
            window = self._windows[(kind, resource)] = _Window(now)
        reset_after = window.start + seconds - now
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": hashlib.sha1(kind.encode()).hexdigest()[:16],
        }
        if window.count >= limit:
            self.rate_limited += 1
            return _rate_limited(reset_after, {**headers, "X-RateLimit-Remaining": "0"}), {}
        window.count += 1
        return None, {**headers, "X-RateLimit-Remaining": str(limit - window.count)}

    # Routes

    def _route_table(self) -> list[Route]:
        snowflake, token = r"(\d+)", r"([^/]+)"
        return [
            Route("GET", "/users/@me", self._me),
            Route("GET", "/gateway/bot", self._gateway_bot),
            Route("GET", "/oauth2/applications/@me", self._application),
            Route("GET", "/applications/@me", self._application),
            Route("POST", f"/channels/{snowflake}/typing", self._typing),
            Route("GET", f"/channels/{snowflake}", self._get_channel),
            Route("GET", f"/channels/{snowflake}/messages", self._list_messages),
            Route("DELETE", f"/channels/{snowflake}/messages/{snowflake}", self._delete_message, "delete"),
            Route("POST", f"/channels/{snowflake}/messages", self._create_message, "create"),
            Route("PATCH", f"/channels/{snowflake}/messages/{snowflake}", self._edit_message, "edit"),
            Route("PUT", f"/applications/{snowflake}/commands", self._put_commands),
            Route("PUT", f"/applications/{snowflake}/guilds/{snowflake}/commands", self._put_commands),
            Route("GET", f"/applications/{snowflake}/commands", self._no_commands),
            Route("GET", f"/applications/{snowflake}/guilds/{snowflake}/commands", self._no_commands),
            Route("POST", f"/interactions/{snowflake}/{token}/callback", self._callback),
            Route("POST", f"/webhooks/{snowflake}/{token}", self._execute_webhook, "webhook-create", 2),
            Route(
                "PATCH",
                f"/webhooks/{snowflake}/{token}/messages/(@original|\\d+)",
                self._edit_webhook_message,
                "webhook-edit",
                2,
            ),
        ]

    async def _me(self, match: re.Match[str], body: Any) -> web.Response:
        return _json(BOT_USER)

    async def _gateway_bot(self, match: re.Match[str], body: Any) -> web.Response:
        """Where to connect, the shard count to run, and how many shards may IDENTIFY at once."""
        limit = {"total": 1000, "remaining": 1000, "reset_after": 86_400_000}
        return _json(
            {
                "url": self.gateway_url,
                "shards": self.shards,
                "session_start_limit": {**limit, "max_concurrency": self.max_concurrency or 1},
            }
        )

    async def _application(self, match: re.Match[str], body: Any) -> web.Response:
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

    async def _typing(self, match: re.Match[str], body: Any) -> web.Response:
        if int(match.group(1)) not in self._channels():
            return _error(404, 10003, "Unknown Channel")
        return web.Response(status=204)

    async def _create_message(self, match: re.Match[str], body: Any) -> web.Response:
        channel = match.group(1)
        body = body or {}
        if int(channel) not in self._channels():
            return _error(404, 10003, "Unknown Channel")
        if problem := _message_problem(body, creating=True):
            return problem
        reference = body.get("message_reference")
        if reference and not self._referable(reference):
            return _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
        return _json(self._store_message(channel, body))

    async def _edit_message(self, match: re.Match[str], body: Any) -> web.Response:
        channel, message_id = match.group(1), match.group(2)
        message = self.state.messages.get(message_id)
        if message is None or message["channel_id"] != channel:
            return _error(404, 10008, "Unknown Message")
        if message["author"]["id"] != str(BOT_ID):
            return _error(403, 50005, "Cannot edit a message authored by another user")
        if message["flags"] & EPHEMERAL:  # only its interaction's token can reach an ephemeral message
            return _error(404, 10008, "Unknown Message")
        return self._edit(message, body or {})

    async def _delete_message(self, match: re.Match[str], body: Any) -> web.Response:
        channel, message_id = match.group(1), match.group(2)
        message = self.state.messages.get(message_id)
        if message is None or message["channel_id"] != channel or message["flags"] & EPHEMERAL:
            return _error(404, 10008, "Unknown Message")
        if message["author"]["id"] != str(BOT_ID):  # another's message needs Manage Messages
            return _error(403, 50013, "Missing Permissions")
        del self.state.messages[message_id]
        return web.Response(status=204)

    async def _get_channel(self, match: re.Match[str], body: Any) -> web.Response:
        channel = int(match.group(1))
        if channel not in self._channels():
            return _error(404, 10003, "Unknown Channel")
        if channel == DM_CHANNEL:
            return _json({"id": str(DM_CHANNEL), "type": 1, "recipients": [_user(ALICE)], "flags": 0})
        if channel == THREAD:
            return _json(self._thread())
        return _json(self._text_channel(channel))

    async def _list_messages(self, match: re.Match[str], body: Any, query: Any = None) -> web.Response:
        """A page of a channel's (or thread's) messages, newest first, as Discord gives them."""
        channel = int(match.group(1))
        if channel not in self._channels():
            return _error(404, 10003, "Unknown Channel")
        asked = dict(query or {})
        unknown = set(asked) - {"limit", "before", "after", "around"}
        if unknown:
            return _form_error(sorted(unknown)[0], "UNKNOWN_FIELD", "Unknown query parameter")
        raw_limit = asked.pop("limit", str(HISTORY_DEFAULT))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= HISTORY_MAX:
            return _form_error("limit", "NUMBER_TYPE_MAX", "int value should be between 1 and 100.")
        limit = int(raw_limit)
        if len(asked) > 1:  # documented: before, after and around are mutually exclusive
            return _form_error("_errors", "QUERY_PARAMETERS_EXCLUSIVE", "Only one of before, after, around")
        for name, value in asked.items():
            if not value.isdigit():
                return _form_error(name, "NUMBER_TYPE_COERCE", f"Value {value!r} is not snowflake.")
        permissions = self.permissions(str(BOT_ID), [], channel) if channel != DM_CHANNEL else ALL_PERMISSIONS
        if not permissions & VIEW_CHANNEL:
            return _error(403, 50001, "Missing Access")
        if not permissions & READ_MESSAGE_HISTORY:  # documented: no messages, not an error
            return _json([])
        here = sorted(
            (m for m in self.state.messages.values() if m["channel_id"] == str(channel)),
            key=lambda m: int(m["id"]),
        )
        if "before" in asked:
            page = [m for m in here if int(m["id"]) < int(asked["before"])][-limit:]
        elif "after" in asked:
            page = [m for m in here if int(m["id"]) > int(asked["after"])][:limit]
        elif "around" in asked:
            pivot = int(asked["around"])
            older = [m for m in here if int(m["id"]) <= pivot]
            newer = [m for m in here if int(m["id"]) > pivot]
            page = older[-(limit - limit // 2) :] + newer[: limit // 2]
        else:
            page = here[-limit:]
        return _json(page[::-1])

    async def _put_commands(self, match: re.Match[str], body: Any) -> web.Response:
        if match.group(1) != str(APP_ID):
            return _error(403, 50001, "Missing Access")
        if problem := _commands_problem(body or []):
            return problem
        self.state.commands = {command["name"]: command for command in body or []}
        return _json(
            [
                {**c, "id": str(800_000 + i), "application_id": str(APP_ID), "version": "1"}
                for i, c in enumerate(body or [])
            ]
        )

    async def _no_commands(self, match: re.Match[str], body: Any) -> web.Response:
        return _json([])

    async def _callback(self, match: re.Match[str], body: Any) -> web.Response:
        interaction = self.state.interactions.get(match.group(1))
        if interaction is None or interaction.token != match.group(2):
            return _error(404, 10062, "Unknown interaction")
        if interaction.response is not None:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - interaction.created > self.initial_response_seconds:
            return _error(404, 10062, "Unknown interaction")
        body = body or {}
        kind, data = body.get("type"), body.get("data") or {}
        if interaction.autocomplete:
            allowed: tuple[int, ...] = (8,)
        elif interaction.modal_submit:  # MODAL is not available for MODAL_SUBMIT interactions
            allowed = (4, 5)
        else:
            allowed = (4, 5, 6, 7, 9) if interaction.message else (4, 5, 9)
        if kind not in allowed:
            return _form_error("type", "INTERACTION_CALLBACK_TYPE_INVALID", "Invalid callback type")
        if kind == 9 and (problem := _modal_problem(data)):
            return problem
        if kind == 9:
            interaction.modal = data
        if kind == 8 and (problem := _choices_problem(data.get("choices") or [], "data.choices")):
            return problem
        if kind == 4 and (problem := _message_problem(data, creating=True, field="data.")):
            return problem
        if kind == 7 and (problem := _message_problem(data, creating=False, field="data.")):
            return problem
        interaction.response = kind
        answer: dict[str, Any] = {
            "id": interaction.id,
            "type": 4
            if interaction.autocomplete
            else 5
            if interaction.modal_submit
            else 3
            if interaction.message
            else 2,
        }
        if kind == 7:  # UPDATE_MESSAGE: the clicked message changes
            assert interaction.message is not None
            self._edit(self.state.messages[interaction.message], data)
        if kind in (4, 5):
            flags = (data.get("flags") or 0) & EPHEMERAL
            loading = {"content": "", "flags": flags | LOADING}
            message = self._store_message(interaction.channel, data if kind == 4 else loading)
            interaction.original, interaction.original_done = message["id"], kind == 4
            answer |= {
                "response_message_id": message["id"],
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(flags),
            }
        return _json({"interaction": answer})

    def _interaction_for(self, application: str, token: str) -> Interaction | web.Response:
        """The interaction behind a webhook token, or Discord's refusal of the token."""
        interaction = next((i for i in self.state.interactions.values() if i.token == token), None)
        if application != str(APP_ID) or interaction is None:
            return _error(404, 10015, "Unknown Webhook")
        age = time.monotonic() - interaction.created
        if age > self.token_seconds:
            return _error(401, 50027, "Invalid Webhook Token")
        if interaction.response is None:  # never acknowledged: invalidated after 3 s, unusable before
            return _error(404, 10015, "Unknown Webhook")
        return interaction

    async def _execute_webhook(self, match: re.Match[str], body: Any) -> web.Response:
        interaction = self._interaction_for(match.group(1), match.group(2))
        if isinstance(interaction, web.Response):
            return interaction
        body = body or {}
        if interaction.response == 5 and not interaction.original_done:
            # Documented: the first follow-up after a deferral edits the loading message instead.
            assert interaction.original is not None
            interaction.original_done = True
            return self._edit(self.state.messages[interaction.original], body, keep_flags=True)
        if problem := _message_problem(body, creating=True):
            return problem
        message = self._store_message(interaction.channel, body)
        interaction.followups.add(message["id"])
        return _json(message)

    async def _edit_webhook_message(self, match: re.Match[str], body: Any) -> web.Response:
        interaction = self._interaction_for(match.group(1), match.group(2))
        if isinstance(interaction, web.Response):
            return interaction
        target = match.group(3)
        message_id = interaction.original if target == "@original" else target
        if message_id is None or (target != "@original" and target not in interaction.followups):
            return _error(404, 10008, "Unknown Message")
        if target == "@original":
            interaction.original_done = True
        return self._edit(self.state.messages[message_id], body or {}, keep_flags=True)

    # Messages

    def _edit(
        self, message: dict[str, Any], body: dict[str, Any], *, keep_flags: bool = False
    ) -> web.Response:
        if problem := _message_problem(body, creating=False):
            return problem
        content = body.get("content", message["content"])
        if not content and not body.get("embeds", message["embeds"]) and not body.get("attachments"):
            return _error(400, 50006, "Cannot send an empty message")
        message.update({k: v for k, v in body.items() if k in ("content", "allowed_mentions", "components")})
        if keep_flags:
            message["flags"] &= ~LOADING
        message["edited_timestamp"] = datetime.now(UTC).isoformat()
        return _json(message)

    def _referable(self, reference: dict[str, Any]) -> bool:
        if reference.get("fail_if_not_exists") is False:
            return True
        return str(reference.get("message_id")) in self.state.messages

    def _new_message(self, channel: str, body: dict[str, Any]) -> dict[str, Any]:
        message_id = self.snowflake()
        return {
            "id": message_id,
            "channel_id": channel,
            "author": BOT_USER,
            "content": body.get("content", ""),
            "timestamp": _timestamp(message_id),
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
            "components": body.get("components") or [],
        }

    def _store_message(self, channel: str, body: dict[str, Any]) -> dict[str, Any]:
        message = self._new_message(channel, body)
        if body.get("message_reference"):  # absent, not null, when there is none: discord.py reads it so
            message["message_reference"] = {"channel_id": channel, **body["message_reference"]}
        self.state.messages[message["id"]] = message
        return message

    # The guild

    def _channels(self) -> set[int]:
        return {GENERAL, RANDOM, THREAD, DM_CHANNEL, ELSEWHERE, *ROOMS}

    def _interaction(self, kind: int, channel: int, user: dict[str, Any], roles: list[int]) -> dict[str, Any]:
        """What every interaction Discord sends carries, before its `data`."""
        interaction_id = self.snowflake()
        return {
            "id": interaction_id,
            "application_id": str(APP_ID),
            "type": kind,
            "token": f"token-{interaction_id}",
            "version": 1,
            "guild_id": str(GUILD_ID),
            "channel_id": str(channel),
            "channel": {
                "id": str(channel),
                "type": 11 if channel == THREAD else 0,
                "guild_id": str(GUILD_ID),
                **({"parent_id": str(GENERAL)} if channel == THREAD else {}),
            },
            # Discord sends the member's permissions in this channel, overwrites applied.
            "member": {
                **self._member(user, roles),
                "permissions": str(self.permissions(user["id"], roles, channel)),
            },
            "app_permissions": str(ALL_PERMISSIONS),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(GUILD_ID)},
            "context": 0,
            "attachment_size_limit": 10_485_760,
        }

    def _member(self, user: dict[str, Any], roles: list[int] | None = None) -> dict[str, Any]:
        return {
            "user": _user(user),
            "roles": [str(role) for role in roles or []],
            "joined_at": "2026-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
        }

    def _roles(self, guild: int = GUILD_ID) -> list[dict[str, Any]]:
        everyone = {
            "id": str(guild),
            "name": "@everyone",
            "permissions": str(VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY),
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
            "permissions": str(MANAGE_CHANNELS | VIEW_CHANNEL | SEND_MESSAGES),
        }
        return [everyone, managers]

    def _text_channel(self, channel_id: int) -> dict[str, Any]:
        names = {GENERAL: "general", RANDOM: "random", ELSEWHERE: "elsewhere"}
        return {
            "id": str(channel_id),
            "type": 0,
            "name": names.get(channel_id, f"room-{channel_id - ROOMS[0]}"),
            "position": channel_id,
            "guild_id": str(OTHER_GUILD if channel_id == ELSEWHERE else GUILD_ID),
            "permission_overwrites": self.overwrites.get(channel_id, []),
            "nsfw": False,
            "parent_id": None,
        }

    def _thread(self) -> dict[str, Any]:
        return {
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

    def _guild(self, guild: int = GUILD_ID) -> dict[str, Any]:
        channels = (GENERAL, RANDOM, *ROOMS) if guild == GUILD_ID else (ELSEWHERE,)
        return {
            "id": str(guild),
            "name": "Test guild" if guild == GUILD_ID else "Another guild",
            "icon": None,
            "owner_id": str(100_000_000_000_000_000 + 999),
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": self._roles(guild),
            "channels": [self._text_channel(channel) for channel in channels],
            "threads": [self._thread()] if guild == GUILD_ID else [],
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


@contextlib.asynccontextmanager
async def running(discord_api: DiscordEmulator, engine: Engine) -> AsyncIterator[DiscordPlatform]:
    """Parley's Discord platform connected to this emulator until the block ends, started and stopped as
    `parley run` does: start, recover what a previous run left, and at the end drain, then stop."""
    # The loopback Discord sends its one server right after READY: no need to wait 2 s for more.
    discord = DiscordPlatform(engine, engine.settings, guild_ready=0.5)
    engine.register(discord)
    async with asyncio.timeout(20):
        await discord.start()
    try:
        await engine.recover(discord.name)
        await discord.lead()  # the one instance leads: it syncs the slash commands
        yield discord
    finally:
        await engine.drain(engine.settings.shutdown_grace_seconds)
        await discord.stop()


async def until(predicate: Callable[[], Any], seconds: float = 10.0) -> None:
    """Wait for something the bot does to show in the emulator (polled: it lands from another task)."""
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


# What Discord refuses


def _message_problem(body: dict[str, Any], *, creating: bool, field: str = "") -> web.Response | None:
    if body.get("multipart"):
        return None
    content = body.get("content") or ""
    if len(content) > MESSAGE_LIMIT:
        return _form_error(f"{field}content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
    carries = ("embeds", "sticker_ids", "components", "attachments", "poll")
    if creating and not content and not any(body.get(key) for key in carries):
        return _error(400, 50006, "Cannot send an empty message")
    if "components" in body:
        return _components_problem(body["components"] or [], f"{field}components")
    return None


BUTTON_LABEL, CUSTOM_ID, OPTION_TEXT, PLACEHOLDER = 80, 100, 100, 150


def _components_problem(rows: list[dict[str, Any]], where: str) -> web.Response | None:
    """What Discord refuses in a message's components (action rows of buttons or one select)."""
    if len(rows) > 5:
        return _form_error(where, "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
    seen: set[str] = set()
    for r, row in enumerate(rows):
        here = f"{where}.{r}"
        items = row.get("components") or []
        if row.get("type") != 1 or not 1 <= len(items) <= 5:
            return _form_error(f"{here}.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5.")
        if any(item.get("type") != 2 for item in items) and len(items) > 1:
            return _form_error(
                f"{here}.components", "COMPONENT_LAYOUT_WIDTH_EXCEEDED", "A select fills its row"
            )
        for i, item in enumerate(items):
            at = f"{here}.components.{i}"
            custom = item.get("custom_id")
            if item.get("type") == 2 and item.get("style") == 5:
                if custom is not None or not item.get("url"):
                    return _form_error(
                        at, "BUTTON_COMPONENT_INVALID", "A link button has a url, no custom_id"
                    )
                continue
            if not isinstance(custom, str) or not 1 <= len(custom) <= CUSTOM_ID:
                return _form_error(f"{at}.custom_id", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100.")
            if custom in seen:
                return _form_error(f"{at}.custom_id", "COMPONENT_CUSTOM_ID_DUPLICATED", "Duplicate custom_id")
            seen.add(custom)
            if item.get("type") == 2:
                if item.get("style") not in (1, 2, 3, 4):
                    return _form_error(
                        f"{at}.style", "BASE_TYPE_CHOICES", "Value must be one of (1, 2, 3, 4, 5)."
                    )
                if len(item.get("label") or "") > BUTTON_LABEL or not (
                    item.get("label") or item.get("emoji")
                ):
                    return _form_error(f"{at}.label", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 80.")
            elif item.get("type") == 3:
                if problem := _select_problem(item, at):
                    return problem
            else:
                return _form_error(f"{at}.type", "UNION_TYPE_CHOICES", "Not a message component type here")
    return None


def _select_problem(select: dict[str, Any], where: str) -> web.Response | None:
    options = select.get("options") or []
    if not 1 <= len(options) <= 25:
        return _form_error(f"{where}.options", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 25 in length.")
    if len(select.get("placeholder") or "") > PLACEHOLDER:
        return _form_error(f"{where}.placeholder", "BASE_TYPE_MAX_LENGTH", "Must be 150 or fewer in length.")
    low, high = select.get("min_values", 1), select.get("max_values", 1)
    if not 0 <= low <= 25 or not 1 <= high <= min(25, len(options)) or low > high:
        return _form_error(f"{where}.max_values", "BASE_TYPE_BAD_LENGTH", "Values out of range")
    for o, option in enumerate(options):
        for name in ("label", "value"):
            text = option.get(name)
            if not isinstance(text, str) or not 1 <= len(text) <= OPTION_TEXT:
                return _form_error(
                    f"{where}.options.{o}.{name}", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100."
                )
        if len(option.get("description") or "") > OPTION_TEXT:
            return _form_error(
                f"{where}.options.{o}.description", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer."
            )
    return None


_NAME = re.compile(r"[-_'\w]{1,32}")


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name != name.lower():
        return "APPLICATION_COMMAND_INVALID_NAME"
    return None


def _description_problem(description: Any) -> str | None:
    if not isinstance(description, str) or not 1 <= len(description) <= 100:
        return "BASE_TYPE_BAD_LENGTH"
    return None


def _commands_problem(commands: list[dict[str, Any]]) -> web.Response | None:
    names = [command.get("name") for command in commands]
    if len(set(names)) != len(names):
        return _form_error("_errors", "APPLICATION_COMMANDS_DUPLICATE_NAME", "Duplicate command names")
    for index, command in enumerate(commands):
        where = f"{index}"
        if code := _name_problem(command.get("name")):
            return _form_error(f"{where}.name", code, "Invalid command name")
        if command.get("type", 1) == 1 and (code := _description_problem(command.get("description"))):
            return _form_error(f"{where}.description", code, "Must be between 1 and 100 in length.")
        if problem := _options_problem(command.get("options") or [], f"{where}.options"):
            return problem
    return None


def _options_problem(options: list[dict[str, Any]], where: str) -> web.Response | None:
    if len(options) > 25:
        return _form_error(where, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    names = [option.get("name") for option in options]
    if len(set(names)) != len(names):
        return _form_error(where, "APPLICATION_COMMAND_OPTIONS_DUPLICATE_NAME", "Duplicate option names")
    required = [bool(option.get("required")) for option in options]
    if required != sorted(required, reverse=True):
        message = "Required options must be placed before non-required options"
        return _form_error(where, "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID", message)
    for index, option in enumerate(options):
        here = f"{where}.{index}"
        if code := _name_problem(option.get("name")):
            return _form_error(f"{here}.name", code, "Invalid option name")
        if code := _description_problem(option.get("description")):
            return _form_error(f"{here}.description", code, "Must be between 1 and 100 in length.")
        choices = option.get("choices") or []
        if choices and option.get("autocomplete"):
            message = "Autocomplete cannot be set with choices"
            return _form_error(f"{here}.autocomplete", "APPLICATION_COMMAND_AUTOCOMPLETE_INVALID", message)
        if problem := _choices_problem(choices, f"{here}.choices"):
            return problem
        if problem := _options_problem(option.get("options") or [], f"{here}.options"):
            return problem
    return None


def _modal_problem(data: dict[str, Any]) -> web.Response | None:
    """A modal Discord would refuse: title and custom id lengths, 1 to 5 action rows each holding one
    text input, and each input's label, style, placeholder, value and length bounds."""
    if not isinstance(data.get("custom_id"), str) or not 1 <= len(data["custom_id"]) <= 100:
        return _form_error("data.custom_id", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    if not isinstance(data.get("title"), str) or not 1 <= len(data["title"]) <= 45:
        return _form_error("data.title", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length.")
    rows = data.get("components") or []
    if not 1 <= len(rows) <= 5:
        return _form_error("data.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
    for index, row in enumerate(rows):
        where = f"data.components.{index}"
        items = row.get("components") or []
        if row.get("type") != 1 or len(items) != 1 or items[0].get("type") != 4:
            return _form_error(
                where, "COMPONENT_LAYOUT_WIDTH_EXCEEDED", "An action row in a modal holds one text input."
            )
        field_ = items[0]
        where += ".components.0"
        if not isinstance(field_.get("custom_id"), str) or not 1 <= len(field_["custom_id"]) <= 100:
            return _form_error(
                f"{where}.custom_id", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        if not isinstance(field_.get("label"), str) or not 1 <= len(field_["label"]) <= 45:
            return _form_error(
                f"{where}.label", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length."
            )
        if field_.get("style") not in (1, 2):
            return _form_error(f"{where}.style", "BASE_TYPE_CHOICES", "Value must be one of (1, 2).")
        if len(field_.get("placeholder") or "") > 100:
            return _form_error(
                f"{where}.placeholder", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length."
            )
        if len(field_.get("value") or "") > 4000:
            return _form_error(f"{where}.value", "BASE_TYPE_MAX_LENGTH", "Must be 4000 or fewer in length.")
        low, high = field_.get("min_length", 0), field_.get("max_length", 4000)
        if not 0 <= low <= 4000 or not 1 <= high <= 4000 or low > high:
            return _form_error(f"{where}.max_length", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 4000.")
    return None


def _choices_problem(choices: list[dict[str, Any]], where: str) -> web.Response | None:
    if len(choices) > 25:
        return _form_error(where, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    for index, choice in enumerate(choices):
        name, value = choice.get("name"), choice.get("value")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            return _form_error(f"{where}.{index}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100.")
        if isinstance(value, str) and len(value) > 100:
            return _form_error(f"{where}.{index}.value", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer.")
    return None


def _timestamp(snowflake: str) -> str:
    """When a message with this id was sent, as Discord writes message timestamps."""
    milliseconds = (int(snowflake) >> 22) + DISCORD_EPOCH_MS
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py reads JSON only when the Content-Type is exactly application/json.
    headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(data).encode(), status=status, headers=headers)


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status)


def _form_error(where: str, code: str, message: str) -> web.Response:
    """Discord's 50035 Invalid Form Body, naming the field at fault."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(where.split(".")):
        if part != "_errors":
            errors = {part: errors}
    return _json({"message": "Invalid Form Body", "code": 50035, "errors": errors}, 400)


def _rate_limited(retry_after: float, headers: dict[str, str]) -> web.Response:
    # discord.py retries a 429 only when it carries `Via` (else it takes it for a Cloudflare ban).
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
    extra = {"Via": "1.1 google", "Retry-After": str(math.ceil(retry_after)), "X-RateLimit-Scope": "user"}
    return _json(body, 429, {**headers, **extra})
