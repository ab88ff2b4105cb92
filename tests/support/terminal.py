"""A program on a pseudo-terminal, seen through a VT100 emulator (pyte) the way a person would see it.

    async with Terminal(rows=24, cols=80) as term:
        await term.spawn([sys.executable, "-m", "bot", "chat"], cwd=..., env=...)
        await term.wait_for("you> ")
        await term.type("hello\\r")
        await term.wait_for("echo: ")
        assert "hello" in term.transcript()

The pty is the program's controlling terminal, so Ctrl-C (`\\x03`) reaches it as SIGINT exactly as from a
keyboard. The emulator answers cursor-position requests like a real terminal does. `raw` keeps every
byte the program wrote, for checks on what the screen cannot show.
"""

from __future__ import annotations

import asyncio
import codecs
import fcntl
import os
import pty
import struct
import termios
from collections.abc import Callable
from pathlib import Path

import pyte

PATIENCE = 30  # seconds to wait for what must show up: generous, since the machine may be busy


def _make_controlling_terminal() -> None:
    """In the child, after its new session starts: the pty becomes its controlling terminal."""
    fcntl.ioctl(next(fd for fd in (0, 1, 2) if os.isatty(fd)), termios.TIOCSCTTY, 0)


class Terminal:
    def __init__(self, rows: int = 24, cols: int = 80) -> None:
        self.rows, self.cols = rows, cols
        self.screen = pyte.HistoryScreen(cols, rows, history=10_000)
        self.screen.write_process_input = self._answer  # type: ignore[method-assign]
        self._stream = pyte.Stream(self.screen)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.raw = bytearray()
        self.master = -1
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Terminal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._close_master()

    async def spawn(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> None:
        """Start `argv` on the terminal: its stdin, stdout and stderr, except those given otherwise."""
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.cols, 0, 0))
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env={"TERM": "xterm-256color", **env},
            stdin=slave if stdin is None else stdin,
            stdout=slave if stdout is None else stdout,
            stderr=slave if stderr is None else stderr,
            start_new_session=True,
            preexec_fn=_make_controlling_terminal,
        )
        os.close(slave)
        os.set_blocking(self.master, False)
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every copy of the other end has closed
            data = b""
        if not data:
            self._close_master()
            return
        self.raw += data
        self._stream.feed(self._decoder.decode(data))
        self._changed.set()

    def _close_master(self) -> None:
        if self.master >= 0:
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.master = -1
            self._closed.set()
            self._changed.set()

    def _answer(self, data: str) -> None:
        """What the terminal itself sends back, such as a cursor-position report."""
        if self.master >= 0:
            os.write(self.master, data.encode())

    async def type(self, keys: str) -> None:
        """Send keys as a keyboard would (Enter is `\\r`, Ctrl-C `\\x03`, arrows `\\x1b[D` …)."""
        data = keys.encode()
        while data:
            try:
                written = os.write(self.master, data[:1024])
            except BlockingIOError:  # the program is not reading yet: its input queue is full
                written = 0
            data = data[written:]
            await asyncio.sleep(0 if written else 0.01)

    def lines(self) -> list[str]:
        """Every line, the ones scrolled off the top first, as the screen shows them."""
        scrolled = [
            "".join(row[x].data for x in range(self.cols)).rstrip() for row in self.screen.history.top
        ]
        return scrolled + [line.rstrip() for line in self.screen.display]

    def transcript(self) -> str:
        return "\n".join(self.lines()).rstrip("\n")

    def cursor_line(self) -> str:
        return self.screen.display[self.screen.cursor.y].rstrip()

    async def wait_until(self, check: Callable[[], bool], what: str) -> None:
        """Wait until `check()` holds of what has arrived; fail saying `what` did not show up."""
        try:
            async with asyncio.timeout(PATIENCE):
                while not check():
                    if self._closed.is_set():
                        raise AssertionError(f"the program closed the terminal before {what}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{what} never showed up; the screen:\n{self.transcript()}") from None

    async def wait_for(self, text: str, *, count: int = 1) -> None:
        """Wait until `text` appears `count` times on the screen and its scrollback."""
        await self.wait_until(lambda: self.transcript().count(text) >= count, repr(text))

    async def wait_for_prompt(self, prompt: str = "you> ", *, count: int = 1) -> None:
        """Wait for the `count`-th prompt, with the cursor waiting on it (lines are compared without the
        spaces that end them)."""
        prompt = prompt.rstrip()
        await self.wait_until(
            lambda: self.transcript().count(prompt) >= count and self.cursor_line() == prompt,
            f"prompt number {count}",
        )

    async def exit_status(self) -> int:
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), PATIENCE)
        except TimeoutError:
            raise AssertionError(f"the program did not exit; the screen:\n{self.transcript()}") from None
