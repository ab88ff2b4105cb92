"""How the terminal chat shows replies, in-process: neutralized text, and Markdown streamed block by block
into a VT100 emulator, which must end up showing exactly what rich prints for the finished document."""

from __future__ import annotations

import io

import pyte
import pytest
from rich.console import Console

from adapters.console.safe_text import neutralize
from adapters.console.surfaces import THINKING, ChatMarkdown, PlainSurface, TerminalSurface

HOSTILE = (
    "before\n"
    "\x1b[1A\x1b[2Kcursor up and erase"  # CSI
    "\x1b]0;title\x07"  # OSC, ended by BEL
    "\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\"  # OSC 8 hyperlink, ended by ST
    "\x9b31mC1 CSI\x9d2;title\x9c"  # C1 controls
    "\x1bc\x1b7\x1b8"  # bare ESC: reset, save and restore the cursor
    "bell\x07 back\x08\x08space over\rwrite\x00nul\x7fdel\x0bvt\x0cff"
)

DOCUMENT = "\n".join(
    [
        "# A heading",
        "Some **bold** text",
        "on two lines.",
        "",
        "- one",
        "- two",
        "  - nested",
        "",
        "1. first",
        "",
        "2. second",
        "",
        "```python",
        "def f():",
        "",
        *[f"    x{i} = {i}" for i in range(30)],
        "```",
        "",
        "| col | other |",
        "|-----|-------|",
        "| 1   | 2     |",
        "",
        "> a quote",
        "> that goes on",
        "",
        "---",
        *[f"Line {i} of a paragraph longer than the screen is tall." for i in range(40)],
        "",
        "Setext heading",
        "==============",
        "The end, with a [link](https://example.com).",
    ]
)


def test_every_control_character_but_newline_and_tab_is_shown_not_obeyed() -> None:
    safe = neutralize(HOSTILE)
    assert safe == (
        "before\n"
        "␛[1A␛[2Kcursor up and erase"
        "␛]0;title␇"
        "␛]8;;http://evil.example␛\\link␛]8;;␛\\"
        "␛[31mC1 CSI␛]2;title␛\\"
        "␛c␛7␛8"
        "bell␇ back␈␈space over␍write␀nul␡del␋vt␌ff"
    )
    controls = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)) if chr(c) not in "\n\t"]
    assert not any(c in neutralize("".join(controls)) for c in controls)
    assert neutralize("tab\tand\nnewline") == "tab\tand\nnewline"


def test_line_endings_lose_their_carriage_return_and_growing_text_keeps_growing() -> None:
    assert neutralize("one\r\ntwo\r\n") == "one\ntwo\n"
    assert neutralize("streaming\r") == "streaming"  # maybe a line ending: decided by what follows
    text = "a\r\nb\rc\x1b[Ad\x9be"
    for end in range(len(text)):
        assert neutralize(text).startswith(neutralize(text[:end]))


class Screen(io.TextIOBase):
    """A terminal for rich to write to; the pty's ONLCR is played by the emulator's newline mode."""

    def __init__(self, cols: int, rows: int) -> None:
        self.screen = pyte.HistoryScreen(cols, rows, history=10_000)
        self.screen.set_mode(pyte.modes.LNM)
        self.stream = pyte.Stream(self.screen)

    def write(self, text: str) -> int:
        self.stream.feed(text)
        return len(text)

    def isatty(self) -> bool:
        return True

    def lines(self) -> list[str]:
        cols = self.screen.columns
        scrolled = ["".join(row[x].data for x in range(cols)).rstrip() for row in self.screen.history.top]
        lines = scrolled + [line.rstrip() for line in self.screen.display]
        while lines and not lines[-1]:
            lines.pop()
        return lines


def rendered_whole(markup: str, cols: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=cols, color_system=None).print(ChatMarkdown(markup))
    return [line.rstrip() for line in out.getvalue().rstrip("\n").split("\n")]


@pytest.mark.parametrize("step", [7, 97])
async def test_a_reply_streamed_into_a_small_terminal_ends_exactly_as_the_whole_document(step: int) -> None:
    cols, rows = 60, 12
    terminal = Screen(cols, rows)
    console = Console(file=terminal, force_terminal=True, width=cols, height=rows, color_system="truecolor")
    surface = TerminalSurface(console)
    await surface.start()
    assert THINKING in "\n".join(terminal.lines())
    whole = rendered_whole(DOCUMENT, cols)
    for index, end in enumerate(range(1, len(DOCUMENT), step)):
        await surface.render(DOCUMENT[:end], final=False)
        if index % 20 == 0:  # what scrolled away is never drawn twice
            assert len(terminal.lines()) <= len(whole) + rows
    await surface.render(DOCUMENT, final=True)
    assert terminal.lines() == whole


async def test_the_block_being_written_is_cut_to_the_screen_and_settled_blocks_print_once() -> None:
    cols, rows = 50, 8
    terminal = Screen(cols, rows)
    console = Console(file=terminal, force_terminal=True, width=cols, height=rows)
    surface = TerminalSurface(console)
    code = "```\n" + "\n".join(f"row {i}" for i in range(30))
    await surface.render("Intro.\n\n" + code, final=False)
    shown = terminal.lines()
    assert shown.count("Intro.") == 1
    assert "row 29" in shown[-1] and len(shown) <= rows + 2  # the newest rows, nothing scrolled twice
    await surface.render("Intro.\n\n" + code + "\n```\n\nDone.", final=True)
    assert terminal.lines() == rendered_whole("Intro.\n\n" + code + "\n```\n\nDone.", cols)
    assert terminal.lines().count("Intro.") == 1


async def test_the_terminal_shows_hostile_text_as_text() -> None:
    terminal = Screen(100, 10)
    console = Console(file=terminal, force_terminal=True, width=100, height=10)
    surface = TerminalSurface(console)
    await surface.start()
    await surface.render(HOSTILE[:30], final=False)
    await surface.render(HOSTILE, final=True)
    text = "\n".join(terminal.lines())
    assert "before" in text and "␛[1A␛[2Kcursor up and erase" in text and "space over␍write" in text
    assert terminal.screen.title == ""  # no OSC reached the emulator
    assert all(cell.fg == "default" for row in terminal.screen.buffer.values() for cell in row.values())


async def test_a_pipe_gets_plain_neutralized_text_as_it_grows() -> None:
    out = io.StringIO()
    gone: list[bool] = []
    surface = PlainSurface(out, lambda: gone.append(True))
    await surface.render("**Hello**\x1b[2J", final=False)
    await surface.render("**Hello**\x1b[2J there\r", final=False)
    await surface.render("**Hello**\x1b[2J there\r\n", final=True)
    assert out.getvalue() == "**Hello**␛[2J there\n\n" and not gone


async def test_a_pipe_whose_reader_left_is_reported_once_and_never_raises() -> None:
    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    gone: list[bool] = []
    surface = PlainSurface(Closed(), lambda: gone.append(True))
    assert await surface.render("text", final=False) == 0
    assert await surface.render("text, and more", final=True) == 0
    assert gone == [True]
