"""The terminal adapter behind `parley chat`: one channel, the person at the keyboard as its admin."""

from __future__ import annotations

import asyncio
import getpass
import sys
import uuid
from collections.abc import Mapping
from typing import Any, TextIO

from bot.engine import Engine
from bot.models import Author, ConversationKey, HistoryEntry, Message, RenderBudget
from bot.store import Store

PLATFORM = "console"


class ConsoleSurface:
    """Prints a reply as it grows; a terminal has no rate limit, so every render goes straight out."""

    budget = RenderBudget()
    refs = None  # printed text cannot be edited later

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._shown = ""

    async def start(self) -> None:
        return None

    async def render(self, text: str, *, final: bool) -> int:
        if text.startswith(self._shown):
            self._out.write(text[len(self._shown) :])
        else:  # not expected: the engine only ever extends a reply; show it whole rather than garble it
            self._out.write("\n" + text)
        self._shown = text
        if final:
            self._out.write("\n")
        self._out.flush()
        return 0


class ConsolePlatform:
    """The terminal as a platform: replies print on standard output, history is the stored conversation."""

    name = PLATFORM

    def __init__(self, store: Store, out: TextIO) -> None:
        self._store = store
        self._out = out

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def surface_for(
        self, conversation: ConversationKey, reply_to: Mapping[str, Any] | None = None
    ) -> ConsoleSurface:
        return ConsoleSurface(self._out)

    async def reopen(self, conversation: ConversationKey, refs: Mapping[str, Any]) -> ConsoleSurface:
        return ConsoleSurface(self._out)

    async def history(
        self,
        conversation: ConversationKey,
        *,
        limit: int,
        before: str | None = None,
        after: str | None = None,
    ) -> list[HistoryEntry]:
        turns = await self._store.history(
            str(conversation), limit, int(before) if before else None, int(after) if after else None
        )
        return [
            HistoryEntry(
                id=str(turn.id),
                author_id=turn.author_id if turn.role == "user" else "parley",
                author_name=turn.author_name if turn.role == "user" else "Parley",
                text=turn.content,
                created_at=turn.created_at,
                by_parley=turn.role == "assistant",
                permalink="",
            )
            for turn in turns
        ]

    async def permalink(self, conversation: ConversationKey, message_id: str) -> str:
        return ""


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"


async def chat(engine: Engine, channel: str, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Answer one message per line until end of input. Prompts and banners only on a real terminal."""
    interactive = stdin.isatty() and stdout.isatty()
    author = Author(id="terminal", display_name=_user_name(), is_channel_manager=True)
    key = ConversationKey(PLATFORM, channel)
    engine.register(ConsolePlatform(engine.store, stdout))
    await engine.recover(PLATFORM, key)
    loop = asyncio.get_running_loop()
    if interactive:
        current = (await engine.settings_for(key)).model
        stdout.write(
            f"Parley chat in channel {channel!r} with {current}. /help lists commands; Ctrl-D leaves.\n"
        )
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = await loop.run_in_executor(None, stdin.readline)
        if not line:
            break
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if interactive:
            stdout.write("parley> ")
        reply = await engine.accept(Message(key=key, author=author, text=text, id=uuid.uuid4().hex))
        if reply is not None:
            await reply
    if interactive:
        stdout.write("\n")
