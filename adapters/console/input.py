"""Where messages come from: a terminal (prompt_toolkit) or a pipe or file (one message per line)."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from typing import TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import History
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import create_output

PROMPT = "you> "
# A terminal in canonical (cooked) mode keeps at most this many bytes of a line and drops the rest.
CANONICAL_LINE_LIMIT = 4095
_SURROGATES = re.compile("[\ud800-\udfff]")  # how prompt_toolkit passes on bytes that are not UTF-8


class BadInput(Exception):
    """Input that cannot be read as messages; the message is the one sentence to print."""


class PromptInput:
    """Lines typed at a terminal. prompt_toolkit reads keys in raw mode, so arrow keys edit the line and
    recall history instead of reaching the model, and a pasted line has no length limit.

    Enter sends, Alt-Enter starts a new line (a pasted block of several lines is one message), Ctrl-C
    clears the line, and on an empty line Ctrl-C or Ctrl-D leaves."""

    def __init__(self, history: History, terminal: TextIO) -> None:
        self.repaired = False  # whether the last line held bytes that were not UTF-8
        self._session: PromptSession[str] = PromptSession(
            history=history,
            key_bindings=_bindings(),
            output=create_output(stdout=terminal),
            prompt_continuation=" " * len(PROMPT),
        )

    async def read(self, prompt: str = PROMPT) -> str | None:
        """The next message (or answer to `prompt`), or None when the person leaves."""
        try:
            text = await self._session.prompt_async(FormattedText([("bold", prompt)]))
        except EOFError:
            return None
        self.repaired = bool(_SURROGATES.search(text))
        return _SURROGATES.sub("\ufffd", text)


def _bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("c-c")
    def _clear_or_leave(event: KeyPressEvent) -> None:
        if event.current_buffer.text:
            event.current_buffer.reset()
        else:
            event.app.exit(exception=EOFError)

    @bindings.add("escape", "enter")
    def _new_line(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


class LineInput:
    """One message per line from a pipe or a file, read as UTF-8.

    A daemon thread reads the descriptor itself (never through sys.stdin's buffer, whose lock a thread
    still blocked in it at exit would make fatal), so a read that blocks, such as a pipe whose writer is
    idle, never keeps the process from exiting. Lines are decoded as they are taken, so everything
    before a bad line is answered first.
    """

    def __init__(self, fd: int, *, from_terminal: bool) -> None:
        self._from_terminal = from_terminal  # a terminal in canonical mode, with nothing to show a prompt
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._number = 0
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, args=(fd, loop), name="stdin", daemon=True).start()

    def _pump(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        pending = bytearray()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # closed or gone: the end of input
                chunk = b""
            pending += chunk
            *lines, rest = pending.split(b"\n")
            if not chunk and rest:
                lines.append(rest)  # a last line without its newline
            pending = bytearray(rest)
            try:
                for line in lines:
                    loop.call_soon_threadsafe(self._lines.put_nowait, bytes(line))
                if not chunk:
                    loop.call_soon_threadsafe(self._lines.put_nowait, None)
                    return
            except RuntimeError:  # the loop has closed: parley chat is exiting
                return

    async def read(self) -> str | None:
        """The next message, or None at the end of input."""
        raw = await self._lines.get()
        if raw is None:
            self._lines.put_nowait(None)  # the end stays the end
            return None
        self._number += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadInput(
                f"Line {self._number} of standard input is not UTF-8 (its byte {error.start + 1} is "
                f"0x{raw[error.start]:02x}), so parley chat stopped before it; convert the input to "
                "UTF-8 (for example with iconv) and send it again."
            ) from None
        if self._from_terminal and len(raw.rstrip(b"\r")) >= CANONICAL_LINE_LIMIT:
            raise BadInput(
                f"Line {self._number} reached the terminal's {CANONICAL_LINE_LIMIT:,}-character line "
                "limit, so the terminal may have cut it and parley chat stopped before sending it; "
                "pipe long text in (parley chat < FILE), or run parley chat with its output on a terminal."
            )
        if self._number == 1:
            text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
        return text.removesuffix("\r")
