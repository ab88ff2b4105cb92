"""The Slack app as `parley run` composes it, on the loopback Slack and LLM: what Slack tests drive."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

import adapters.slack
from adapters.slack import SlackPlatform
from bot.config import Settings
from bot.engine import Engine
from skills import builtin
from tests.support.llm_server import LLMServer
from tests.support.search_server import SearchServer
from tests.support.slack_api import BOT_USER, TEAM, SlackAPI, SlackUser, signed_headers

SECRET = "shh-signing-secret"
MANIFEST = json.loads((Path(adapters.slack.__file__).parent / "manifest.json").read_text())
GRANTED = frozenset(MANIFEST["oauth_config"]["scopes"]["bot"])  # what installing the manifest grants
ALICE = SlackUser("UALICE", "Alice")
BOB = SlackUser("UBOB", "Bob")
ADMIN = SlackUser("UADMIN", "Ada", is_admin=True)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for the app to reach a state; fails with `what` rather than hanging."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Engine, SlackPlatform]]:
    """Parley on Slack as `parley run` composes it: start, recover, and at the end drain and stop."""
    engine = await Engine.create(settings, skills=builtin(settings))
    platform = SlackPlatform(engine, settings, host="127.0.0.1", port=0)
    engine.register(platform)
    await platform.start()
    try:
        await engine.recover(platform.name)
        yield engine, platform
    finally:
        await engine.drain(settings.shutdown_grace_seconds)
        await platform.stop()
        await engine.aclose()


@dataclass
class Harness:
    slack: SlackAPI
    llm: LLMServer
    engine: Engine
    platform: SlackPlatform
    http: aiohttp.ClientSession
    events: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.platform.port}/slack/events"

    async def post(
        self, payload: dict[str, Any], *, form: bool = False, retry: int = 0, **headers: str
    ) -> int:
        body = urlencode(payload) if form else json.dumps(payload)
        sent = {
            "Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
            **signed_headers(body, SECRET),
            **headers,
        }
        if retry:
            sent["X-Slack-Retry-Num"] = str(retry)
        async with self.http.post(self.url, data=body, headers=sent) as response:
            return response.status

    def event(self, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        self.events += 1
        return {
            "type": "event_callback",
            "team_id": TEAM,
            "api_app_id": "A1",
            "event_id": event_id or f"Ev{self.events}",
            "event_time": int(time.time()),
            "event": event,
        }

    async def mention(
        self, text: str, *, channel: str = "C1", ts: str | None = "1700000001.000100", **more: Any
    ) -> int:
        """A person mentions Parley: the message is in the channel (as Slack keeps it), then its event.
        With `ts=None` the message gets the emulator's next ts, after everything said before it."""
        user, thread_ts = more.pop("user", ALICE.id), more.get("thread_ts")
        said = self.slack.say(user, channel, f"<@{BOT_USER}> {text}", ts=ts, thread_ts=thread_ts)
        event = {"type": "app_mention", "user": user, "text": said.text, "ts": said.ts}
        return await self.post(self.event({**event, "channel": channel, "team": TEAM, **more}))

    async def command(self, text: str, *, user: str, channel: str = "C1", **more: str) -> int:
        payload = {
            "command": "/parley",
            "text": text,
            "user_id": user,
            "channel_id": channel,
            "team_id": TEAM,
            "response_url": f"{self.slack.base_url}/respond/{channel}",
            "trigger_id": self.slack.trigger(),
            **more,
        }
        return await self.post(payload, form=True)

    async def finished_streams(self, count: int) -> None:
        await until(lambda: len(self.slack.calls_to("chat.stopStream")) >= count, f"{count} finished streams")


def channel_event(text: str, channel: str, ts: str, **more: str) -> dict[str, object]:
    """A person's message in a channel, as Socket Mode delivers it."""
    body = {"type": "message", "channel_type": "channel", "user": ALICE.id, "text": text, "ts": ts}
    return {
        "type": "event_callback",
        "team_id": TEAM,
        "event_id": f"Ev{channel}{ts}",
        "event": {**body, "channel": channel, "team": TEAM, **more},
    }


def emulator() -> SlackAPI:
    """The loopback Slack of these tests: three people, and the scopes the manifest grants."""
    return SlackAPI(users={u.id: u for u in (ALICE, BOB, ADMIN)}, scopes=set(GRANTED))


def settings_builder(
    make_settings: Callable[..., Settings], slack: SlackAPI, search: SearchServer
) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values = {
            **search.settings(),
            "slack_bot_token": slack.bot_token,
            "slack_signing_secret": SECRET,
            "slack_api_url": slack.api_url,
            "slack_render_interval": 0.02,
        }
        return make_settings(**{**values, **overrides})

    return build


@asynccontextmanager
async def serving(slack: SlackAPI, llm: LLMServer, settings: Settings) -> AsyncIterator[Harness]:
    async with running(settings) as (engine, platform), aiohttp.ClientSession() as http:
        yield Harness(slack, llm, engine, platform, http)
