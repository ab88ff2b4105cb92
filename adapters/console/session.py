"""`parley chat`: one channel, the person at the keyboard as its admin, in a terminal or a pipe.

Input and output are chosen apart. Typed at a terminal, lines go through prompt_toolkit (its prompt on
whichever of stdout and stderr is a terminal); from a pipe or a file, each line is a message. Replies
render as Markdown when stdout is a terminal and as plain text otherwise, always neutralized.

While a person types at the terminal, log lines go to a file beside the history: replies are drawn in
live regions while no prompt is running, so there is no "above the prompt" to print them at, and a line
of log would tear the reply it landed in. The reply itself says in one sentence what went wrong; a
short note after it points to the log when something was logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from rich.console import Console
from rich.text import Text

from adapters.console.input import BadInput, LineInput, PromptInput
from adapters.console.platform import PLATFORM, ConsolePlatform
from adapters.console.prompts import expand, runs_template
from adapters.console.safe_text import neutralize
from adapters.console.surfaces import PlainSurface, TerminalSurface
from bot.engine import Engine
from bot.models import Author, ConversationKey, Message
from bot.reply import STOPPED, Outcome

try:
    import termios
except ImportError:  # Windows: no terminal modes to hold type-ahead with
    termios = None  # type: ignore[assignment]

INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C
NOT_UTF8 = "Your terminal sent bytes that are not UTF-8 (shown as \ufffd); check its encoding setting."
KEYS = "/help lists commands. Alt-Enter starts a new line, Ctrl-C stops a reply, Ctrl-D leaves."


class LogFile(logging.FileHandler):
    """The chat's log while it owns the terminal; counts the records worth a note after a reply."""

    def __init__(self, path: Path, formatter: logging.Formatter | None) -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))  # private from the start
        super().__init__(path, encoding="utf-8")
        self.setFormatter(formatter)
        self.noteworthy = 0

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING:
            self.noteworthy += 1


class Chat:
    """A `parley chat` session. Made before the engine, so that when a person types at the terminal the
    engine's first log lines already go to the file.

    From a pipe or a file, `run` returns 1 when any reply failed (so scripts can tell), 2 for input that
    cannot be read and 130 after Ctrl-C. Whoever reads our output may leave early (`| head -1`): then we
    stop quietly.
    """

    def __init__(self, channel: str, data_dir: Path) -> None:
        self.key = ConversationKey(PLATFORM, channel)
        self.author = Author(id="terminal", display_name=_user_name(), is_channel_manager=True)
        user = re.sub(r"[^\w.-]", "_", self.author.display_name)  # history and log are per user
        self.history_path = data_dir / f"chat-history-{user}"
        self.log_path = data_dir / f"chat-{user}.log"
        # The terminal a person types at and reads prompts on, if any.
        typing = sys.stdin.isatty()
        terminal = next((s for s in (sys.stdout, sys.stderr) if s.isatty()), None) if typing else None
        # Notes are soft-wrapped by the terminal, so a path in one copies whole.
        self.screen = (
            Console(file=terminal, markup=False, emoji=False, highlight=False, soft_wrap=True)
            if terminal
            else None
        )
        self.replies = Console(file=sys.stdout, markup=False, emoji=False, highlight=False)
        self.log: LogFile | None = None
        self.log_problem = ""
        self.reader_gone = False
        self._surface: TerminalSurface | PlainSurface | None = None  # the reply being shown
        self._stop: Callable[[], None] = lambda: None  # stops the reply being shown
        if self.screen is not None:
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
                self._log_to(self.log_path)
            except OSError as error:
                self.log_problem = f"cannot write {error.filename or data_dir} ({error.strerror})"

    async def run(self, engine: Engine) -> int:
        """Answer messages until the input ends or the person leaves; returns the exit status."""
        engine.register(ConsolePlatform(engine.store, self._new_surface))
        await engine.recover(PLATFORM, self.key)  # what a chat in this channel left unanswered
        if self.screen is None:
            reader: PromptInput | LineInput = LineInput(sys.stdin.fileno(), from_terminal=sys.stdin.isatty())
        else:
            reader = PromptInput(await self._welcome(engine), self.screen.file)
        failed = False
        while not self.reader_gone:
            try:
                text = await reader.read()
            except BadInput as error:
                print(error, file=sys.stderr)
                return 2
            if text is None:
                break
            if isinstance(reader, PromptInput) and reader.repaired:
                self._note(NOT_UTF8)
            if not text.strip():
                continue
            message = Message(key=self.key, author=self.author, text=text, id=uuid.uuid4().hex)
            if runs_template(text):  # its missing values are asked for first
                try:
                    expanded = await expand(engine, message, lambda name: self._ask(reader, name))
                except BadInput as error:
                    print(error, file=sys.stderr)
                    return 2
                if expanded is None:
                    break
                if isinstance(expanded, str):
                    await engine.pacer.renderer(self._new_surface()).finish(expanded)
                    self._after_reply()
                    continue
                message = expanded
            outcome = await self._answer(engine, message)
            if self.screen is None and outcome is None and not self.reader_gone:
                return INTERRUPTED
            failed = failed or outcome in ("cut_off", "error")
            self._after_reply()
        return 1 if failed and self.screen is None else 0

    async def _ask(self, reader: PromptInput | LineInput, variable: str) -> str | None:
        """A template's missing value: asked at the prompt, or read as the next line of a pipe (the
        question goes to stderr, so the output stays the replies)."""
        if isinstance(reader, PromptInput):
            return await reader.read(f"{variable}> ")
        print(f"{variable}?", file=sys.stderr, flush=True)
        return await reader.read()

    async def _answer(self, engine: Engine, message: Message) -> Outcome | None:
        """Show the answer to one message. None when it was stopped: by Ctrl-C, or because whoever reads
        our output has gone. The engine keeps a stopped reply's text as cut off."""
        task = await engine.accept(message)
        if task is None:  # a fresh id is never a redelivery
            return None

        def stop() -> None:
            if task.done():  # from a pipe, a Ctrl-C that came as the reply ended is for the chat: pass it on
                if self.screen is None:
                    signal.raise_signal(signal.SIGINT)
            elif not task.cancelling():
                task.cancel(STOPPED)

        self._stop = stop
        try:
            with _on_sigint(stop), _typing_held(self.screen is not None):
                await asyncio.wait({task})
        finally:
            if isinstance(self._surface, TerminalSurface):
                self._surface.close()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        return None if task.cancelled() else task.result()

    def _new_surface(self) -> TerminalSurface | PlainSurface:
        """Where the engine shows the next reply."""

        def reader_gone() -> None:
            self.reader_gone = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to tell anyone
            self._stop()

        # isatty, not rich's is_terminal: FORCE_COLOR in the environment must not put live regions in a pipe.
        self._surface = (
            TerminalSurface(self.replies) if sys.stdout.isatty() else PlainSurface(sys.stdout, reader_gone)
        )
        return self._surface

    async def _welcome(self, engine: Engine) -> History:
        """Greet the person at the terminal; returns their input history, kept in the data directory."""
        model = (await engine.settings_for(self.key)).model
        path = self.history_path
        history: History
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))  # private from the start
            history = FileHistory(path)
            kept = f"History: {path}"
        except OSError as error:
            history = InMemoryHistory()
            kept = f"History is kept only until you leave: cannot write {path} ({error.strerror})"
        if self.log is not None:
            kept += f". Log: {self.log_path}"
        elif self.log_problem:
            kept += f". Logs show here: {self.log_problem}"
        assert self.screen is not None
        self.screen.print(Text(neutralize(f"Parley chat in channel {self.key.channel_id!r} with {model}.")))
        self.screen.print(Text(f"{KEYS}\n{kept}.\n", style="dim"))
        return history

    def _log_to(self, path: Path) -> None:
        """Move the log lines bound for stderr into `path`, keeping their format and level."""
        root = logging.getLogger()
        for index, handler in enumerate(root.handlers):
            to_stderr = getattr(handler, "stream", None) in (sys.stderr, sys.__stderr__)
            if isinstance(handler, logging.StreamHandler) and to_stderr:
                self.log = LogFile(path, handler.formatter)
                self.log.setLevel(handler.level)
                root.handlers[index] = self.log

    def _after_reply(self) -> None:
        if self.log is not None and self.log.noteworthy:
            count, self.log.noteworthy = self.log.noteworthy, 0
            self._note(f"({count} warning{'s' if count > 1 else ''} logged in {self.log_path})")
        # A blank line between turns on a terminal; a pipe gets exactly the replies.
        if sys.stdout.isatty():
            self.replies.print()
        elif self.screen is not None:
            self.screen.print()

    def _note(self, text: str) -> None:
        if self.screen is not None:
            self.screen.print(Text(text, style="dim"))


@contextlib.contextmanager
def _on_sigint(callback: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C calls `callback` instead of interrupting; the handler before it comes back afterwards."""
    loop = asyncio.get_running_loop()
    before = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, callback)
    except (NotImplementedError, RuntimeError):  # not on this platform, or not the main thread
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, before)


@contextlib.contextmanager
def _typing_held(at_terminal: bool) -> Iterator[None]:
    """While a reply prints, keys typed are not echoed into it; they wait for the next prompt, which
    reads them as if typed there. Ctrl-C still reaches us as a signal, and flushes neither what was
    typed ahead nor the reply's text on its way to the screen."""
    if not at_terminal or termios is None:
        yield
        return
    fd = sys.stdin.fileno()
    before = termios.tcgetattr(fd)
    held = termios.tcgetattr(fd)
    held[3] = (held[3] & ~(termios.ECHO | termios.ICANON)) | termios.NOFLSH
    termios.tcsetattr(fd, termios.TCSANOW, held)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, before)


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "you"
