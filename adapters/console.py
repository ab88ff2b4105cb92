"""The terminal adapter behind `parley chat`: one channel, the person at the keyboard as its admin."""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import TextIO

from bot.engine import Engine
from bot.models import Author, ConversationKey, Message, RenderBudget


class ConsoleSurface:
    """Prints a reply as it grows; a terminal has no rate limit, so every render goes straight out."""

    budget = RenderBudget()

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


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"


async def chat(engine: Engine, channel: str, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Answer one message per line until end of input. Prompts and banners only on a real terminal."""
    interactive = stdin.isatty() and stdout.isatty()
    author = Author(id="terminal", display_name=_user_name(), is_channel_manager=True)
    key = ConversationKey("console", channel)
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
        await engine.handle(Message(key=key, author=author, text=text), ConsoleSurface(stdout))
    if interactive:
        stdout.write("\n")
