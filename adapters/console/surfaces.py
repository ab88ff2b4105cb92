"""Where a reply appears: Markdown in a terminal, plain text in a pipe. Both show only neutralized text.

A terminal reply is printed block by block. Every top-level Markdown block but the last is settled (what
follows cannot change it) and printed once, for good; only the block still being written is redrawn, in a
rich.live region cut to the bottom of the screen. Re-rendering the whole growing document instead would
garble the transcript as soon as it grew taller than the screen, since a terminal cannot redraw what has
scrolled away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from markdown_it import MarkdownIt
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment, Segments
from rich.spinner import Spinner
from rich.text import Text

from adapters.console.safe_text import neutralize
from bot.models import RenderBudget

_PARSER = MarkdownIt().enable(["strikethrough", "table"])  # the blocks as rich's Markdown parses them
THINKING = "thinking…"


class ChatMarkdown(Markdown):
    """Markdown as the chat apps show it, where a single newline is a line break, and with no terminal
    hyperlinks: a link shows the address it goes to, which its text could otherwise hide."""

    def __init__(self, markup: str) -> None:
        super().__init__(markup, hyperlinks=False)
        for block in self.parsed:
            for token in block.children or ():
                if token.type == "softbreak":
                    token.type = "hardbreak"


def _block_starts(lines: list[str]) -> list[int]:
    """The line where each top-level Markdown block begins."""
    tokens = _PARSER.parse("\n".join(lines))
    return [t.map[0] for t in tokens if t.level == 0 and t.nesting >= 0 and t.map is not None]


class TerminalSurface:
    """A reply at a terminal: "thinking…" until its first text, then Markdown, block by block."""

    # A re-render parses and draws the block in progress; ten a second reads as smooth and costs little.
    budget = RenderBudget(min_interval=0.1)
    refs = None  # printed text cannot be edited later

    def __init__(self, console: Console) -> None:
        self._console = console
        self._live: Live | None = None
        self._settled = 0  # lines of the reply printed for good
        # The last settled block: rendered again in front of what follows, so the spacing between blocks
        # is exactly what rich gives a whole document.
        self._before: list[str] = []

    async def start(self) -> None:
        self._show(Spinner("dots", Text(THINKING, style="dim")))

    async def render(self, text: str, *, final: bool) -> int:
        pending = neutralize(text).split("\n")[self._settled :]
        if final:
            self.close()
            self._print(pending)
            return 0
        starts = _block_starts(pending)
        if settle := starts[-1] if starts else 0:
            self._print(pending[:settle])
        self._show(Segments(_joined(self._render(pending[settle:])[-self._room() :])))
        return 0

    def close(self) -> None:
        """Take the live region away (whatever ended the reply): the terminal is the prompt's again."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _print(self, lines: list[str]) -> None:
        self._console.print(Segments(_joined(self._render(lines))), end="")
        self._settled += len(lines)
        starts = _block_starts(lines)
        self._before = lines[starts[-1] :] if starts else self._before + lines

    def _render(self, lines: list[str]) -> list[list[Segment]]:
        """How `lines` look after the blocks already printed."""
        if not lines:
            return []
        skip = len(self._lines(self._before)) if self._before else 0
        return self._lines(self._before + lines)[skip:]

    def _lines(self, lines: list[str]) -> list[list[Segment]]:
        markdown = ChatMarkdown("\n".join(lines))
        return self._console.render_lines(markdown, self._console.options, pad=False, new_lines=True)

    def _room(self) -> int:
        return max(1, self._console.size.height - 1)

    def _show(self, renderable: Spinner | Segments) -> None:
        if self._live is None:
            self._live = Live(
                renderable,
                console=self._console,
                transient=True,
                refresh_per_second=10,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start(refresh=True)
        else:
            self._live.update(renderable, refresh=True)


def _joined(lines: list[list[Segment]]) -> list[Segment]:
    return [segment for line in lines for segment in line]


class PlainSurface:
    """A reply written to a pipe or a file: the text as it arrives, then a newline."""

    budget = RenderBudget()
    refs = None

    def __init__(self, out: TextIO, reader_gone: Callable[[], None]) -> None:
        self._out = out
        self._reader_gone = reader_gone
        self._shown = ""
        self._gone = False

    async def start(self) -> None:
        return None

    async def render(self, text: str, *, final: bool) -> int:
        text = neutralize(text)
        # A text that does not extend the last is not expected (the engine only ever extends a reply):
        # show it whole rather than garble it.
        more = text[len(self._shown) :] if text.startswith(self._shown) else "\n" + text
        self._shown = text
        if self._gone:
            return 0
        try:
            self._out.write(more + ("\n" if final else ""))
            self._out.flush()
        except BrokenPipeError:  # whoever reads (`| head -1`) has what it wanted
            self._gone = True
            self._reader_gone()
        return 0
