"""`parley chat` at a terminal: a real subprocess on a pseudo-terminal, watched through a VT100 emulator."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

from rich.console import Console

from adapters.console.surfaces import ChatMarkdown
from tests.support.cli import environment
from tests.support.console import CTRL_C, CTRL_D, ENTER, LEFT, UP, USER, saved_replies, sent, start_chat
from tests.support.llm_server import LLMServer, Script
from tests.support.terminal import Terminal


def squashed(text: str) -> str:
    """Text without its spaces and line breaks, to find a note however the terminal wrapped it."""
    return "".join(text.split())


async def test_arrow_keys_edit_the_line_and_history_is_kept_per_user(llm: LLMServer, workdir: Path) -> None:
    async with Terminal() as term:
        await start_chat(term, llm, workdir)
        await term.type(f"hllo{LEFT * 3}e{ENTER}")
        await term.wait_for(f"echo: {USER}: hello")
        await term.wait_for_prompt(count=2)
        await term.type(CTRL_D)
        assert await term.exit_status() == 0
    history = workdir / "data" / f"chat-history-{USER}"
    assert "+hello" in history.read_text().splitlines()
    assert history.stat().st_mode & 0o777 == 0o600
    async with Terminal() as term:  # a new run recalls it with the up arrow
        await start_chat(term, llm, workdir)
        await term.type(f"{UP} again{ENTER}")
        await term.wait_for(f"echo: {USER}: hello again")
    assert sent(llm) == [f"{USER}: hello", f"{USER}: hello again"]


async def test_ctrl_c_clears_a_typed_line_and_on_an_empty_one_leaves_at_once(
    llm: LLMServer, workdir: Path
) -> None:
    async with Terminal() as term:
        await start_chat(term, llm, workdir)
        await term.type("never sent")
        await term.wait_until(lambda: term.cursor_line() == "you> never sent", "the typed line")
        await term.type(CTRL_C)
        await term.wait_until(lambda: term.cursor_line() == "you>", "the cleared line")
        await term.type(CTRL_C)
        assert await term.exit_status() == 0
    assert llm.chat_requests() == []


async def test_ctrl_c_during_a_reply_stops_it_keeps_it_as_cut_off_and_returns_to_the_prompt(
    llm: LLMServer, workdir: Path
) -> None:
    llm.enqueue(Script(tokens=["The partial", " answer"], stall_after=2))
    async with Terminal() as term:
        await start_chat(term, llm, workdir)
        await term.type(f"tell me{ENTER}")
        await term.wait_for("The partial answer")
        assert "thinking…" not in term.transcript()
        await term.type("typed ahead")  # while the reply prints: not echoed into it, kept for the prompt
        await term.type(CTRL_C)
        await term.wait_for("Stopped.")
        await term.wait_until(lambda: term.cursor_line() == "you> typed ahead", "the typed-ahead line")
        assert "typed ahead" not in term.transcript().split("you> typed ahead")[0]
        assert "restarting" not in term.transcript()
        await term.type(f", then this{ENTER}")
        await term.wait_for(f"echo: {USER}: typed ahead, then this")
        await term.type(CTRL_D)
        assert await term.exit_status() == 0
    history = llm.chat_requests()[-1].json["messages"]
    assert history[-2:] == [
        {"role": "assistant", "content": "The partial answer"},
        {"role": "user", "content": f"{USER}: typed ahead, then this"},
    ]
    assert saved_replies(workdir)[0] == ("The partial answer", "cut_off")


async def test_thinking_shows_until_the_first_token_and_leaves_no_trace(
    llm: LLMServer, workdir: Path
) -> None:
    llm.enqueue(Script(stall_after=0))
    async with Terminal() as term:
        await start_chat(term, llm, workdir)
        await term.type(f"hello?{ENTER}")
        await term.wait_for("thinking…")
        await term.wait_until(lambda: bool(llm.chat_requests()), "the request")  # the message is stored
        await term.type(CTRL_C)
        await term.wait_for("Stopped.")
        await term.wait_for_prompt(count=2)
        assert "thinking…" not in term.transcript()
    assert saved_replies(workdir) == [("", "cut_off")]


async def test_a_long_markdown_reply_streams_into_a_small_terminal_and_reads_as_a_whole(
    llm: LLMServer, workdir: Path
) -> None:
    reply = "\n".join(
        [
            "# Plan",
            "Some **bold** and `code`.",
            "",
            *[f"- step {i}" for i in range(12)],
            "",
            "```python",
            *[f"x{i} = {i}" for i in range(25)],
            "```",
            "",
            *[f"Closing line {i}." for i in range(10)],
        ]
    )
    tokens = [reply[i : i + 9] for i in range(0, len(reply), 9)]
    llm.enqueue(Script(tokens=tokens, delay=0.005))
    async with Terminal(rows=16, cols=60) as term:
        await start_chat(term, llm, workdir)
        await term.type(f"plan it{ENTER}")
        await term.wait_for_prompt(count=2)
        lines = term.lines()
    expected = io.StringIO()
    Console(file=expected, width=60, color_system=None).print(ChatMarkdown(reply))
    want = [line.rstrip() for line in expected.getvalue().rstrip("\n").split("\n")]
    start = lines.index("you> plan it") + 1
    assert lines[start : start + len(want)] == want
    assert "**" not in "\n".join(lines) and " • step 11" in lines


async def test_escape_sequences_in_a_reply_never_drive_the_terminal(llm: LLMServer, workdir: Path) -> None:
    hostile = [
        "first line\n",
        "\x1b[1A\x1b[2K",
        "gotcha \x1b]2;pwned-title\x07\x1b[31mred\x9b32mgreen",
        " \x1bc bell\x07 abc\x08\x08XY safe\revil",
    ]
    llm.enqueue(Script(tokens=hostile))
    async with Terminal() as term:
        await start_chat(term, llm, workdir)
        await term.type(f"hi{ENTER}")
        await term.wait_for_prompt(count=2)
        text = term.transcript()
        assert "you> hi\nfirst line\n␛[1A␛[2Kgotcha ␛]2;pwned-title␇␛[31mred␛[32mgreen ␛c bell␇" in text
        assert "abc␈␈XY safe␍evil" in text
        assert term.screen.title != "pwned-title"
        colours = {cell.fg for row in term.screen.buffer.values() for cell in row.values()}
        assert not colours & {"red", "green"}
        assert b"\x07" not in term.raw and b"pwned-title\x07" not in term.raw


async def test_a_long_typed_line_and_a_pasted_block_arrive_whole(llm: LLMServer, workdir: Path) -> None:
    long_line = " ".join(f"{i:05d}" for i in range(1700))  # 10,199 characters, past the 4,095 limit
    llm.enqueue(Script(tokens=["got the long one"]), Script(tokens=["got the paste"]))
    async with Terminal() as term:
        await start_chat(term, llm, workdir)
        await term.type(long_line + ENTER)
        await term.wait_for("got the long one")  # what scrolled away while typing never reached the screen
        await term.wait_until(lambda: term.cursor_line() == "you>", "the next prompt")
        await term.type("\x1b[200~first line\nsecond line\x1b[201~" + ENTER)  # bracketed paste
        await term.wait_for("got the paste")
    assert sent(llm) == [f"{USER}: {long_line}", f"{USER}: first line\nsecond line"]


async def test_log_lines_go_to_a_file_and_a_note_points_there(llm: LLMServer, workdir: Path) -> None:
    llm.enqueue(Script(status=401))
    async with Terminal() as term:
        await start_chat(term, llm, workdir, LOG_LEVEL="DEBUG")
        await term.type(f"hi{ENTER}")
        await term.wait_for("The openrouter API key was rejected")
        await term.wait_for_prompt(count=2)
        # Before the chat starts, asyncio.run logs its selector at DEBUG, still to stderr.
        text = term.transcript().split("Parley chat in channel")[1]
        log = workdir / "data" / f"chat-{USER}.log"
        assert squashed(f"(1 warning logged in {log})") in squashed(text)
    assert "WARNING" not in text and "DEBUG" not in text
    written = log.read_text()
    assert "WARNING bot.providers.resilience" in written and "DEBUG" in written
    assert "sk-or-v1-cli-secret" not in written and log.stat().st_mode & 0o777 == 0o600


async def test_the_terminal_help_fits_the_terminal(llm: LLMServer, workdir: Path) -> None:
    async with Terminal(cols=100) as term:
        await start_chat(term, llm, workdir)
        await term.type(f"/help{ENTER}")
        await term.wait_for("Type a message to talk to Parley. Commands:")
        await term.wait_for_prompt(count=2)
        await term.type(f"/autoreply on{ENTER}")
        await term.wait_for("/autoreply does not apply here. Try /help.")
        text = term.transcript()
    assert "/model [NAME|default]" in text and "Mention" not in text
    assert "/autoreply [on|off]" not in text


async def test_bytes_that_are_not_utf8_are_replaced_and_named(llm: LLMServer, workdir: Path) -> None:
    async with Terminal() as term:
        await start_chat(term, llm, workdir)
        os.write(term.master, b"caf\xe9\r")
        await term.wait_for("not UTF-8")
        await term.wait_for(f"echo: {USER}: caf\ufffd")
    assert sent(llm) == [f"{USER}: caf\ufffd"]


async def read_pipe(fd: int) -> asyncio.StreamReader:
    """The read end of a pipe as a stream, so a test can wait for a line without blocking the loop."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb"))
    return reader


async def test_typing_with_replies_piped_shows_the_prompt_on_stderr(llm: LLMServer, workdir: Path) -> None:
    read_end, write_end = os.pipe()
    async with Terminal() as term:
        argv = [sys.executable, "-m", "bot", "chat"]
        await term.spawn(argv, cwd=workdir, env=environment(llm, workdir), stdout=write_end)
        os.close(write_end)
        replies = await read_pipe(read_end)
        await term.wait_for_prompt()
        await term.type(f"{'x' * 5000}{LEFT}y{ENTER}")
        line = await asyncio.wait_for(replies.readline(), 30)
        assert line.decode() == f"echo: {USER}: {'x' * 4999}yx\n"  # plain text, no escape codes
        await term.wait_until(lambda: term.cursor_line() == "you>", "the next prompt")
        await term.type(CTRL_D)
        assert await term.exit_status() == 0
        assert await replies.read() == b""


async def test_a_cooked_terminal_line_at_the_limit_is_refused_not_cut(llm: LLMServer, workdir: Path) -> None:
    """Typing into a terminal with no terminal to show a prompt on: the kernel's line limit applies."""
    read_end, write_end = os.pipe()
    async with Terminal() as term:
        await term.spawn(
            [sys.executable, "-m", "bot", "chat"],
            cwd=workdir,
            env=environment(llm, workdir),
            stdout=write_end,
            stderr=write_end,
        )
        os.close(write_end)
        output = await read_pipe(read_end)
        await term.type(f"short one{ENTER}")
        # Once answered, the line queue is empty: the next line meets the limit alone.
        assert await asyncio.wait_for(output.readline(), 30) == f"echo: {USER}: short one\n".encode()
        await term.type(f"{'z' * 5000}{ENTER}")
        assert await term.exit_status() == 2
        refusal = (await asyncio.wait_for(output.read(), 30)).decode()
    assert refusal.startswith("Line 2 reached the terminal's 4,095-character line limit")
    assert refusal.count("\n") == 1 and len(llm.chat_requests()) == 1


async def test_history_and_log_that_cannot_be_written_are_named_and_the_chat_goes_on(
    llm: LLMServer, workdir: Path
) -> None:
    (workdir / "data" / f"chat-history-{USER}").mkdir(parents=True)  # where the files should be
    (workdir / "data" / f"chat-{USER}.log").mkdir()
    async with Terminal() as term:
        await start_chat(term, llm, workdir)
        text = squashed(term.transcript())
        data = workdir / "data"
        assert (
            squashed(f"History is kept only until you leave: cannot write {data}/chat-history-{USER} (")
            in text
        )
        assert squashed(f"Logs show here: cannot write {data}/chat-{USER}.log (Is a directory)") in text
        await term.type(f"still fine{ENTER}")
        await term.wait_for(f"echo: {USER}: still fine")
        await term.type(f"{UP}{ENTER}")  # remembered while the chat runs
        await term.wait_for(f"echo: {USER}: still fine", count=2)


async def test_piped_input_with_replies_on_a_terminal_renders_them(llm: LLMServer, workdir: Path) -> None:
    llm.enqueue(Script(tokens=["**Bold** claim\n\n- a point"]))
    read_end, write_end = os.pipe()
    async with Terminal() as term:
        argv = [sys.executable, "-m", "bot", "chat"]
        await term.spawn(argv, cwd=workdir, env=environment(llm, workdir), stdin=read_end)
        os.close(read_end)
        os.write(write_end, b"first\nsecond\n")
        os.close(write_end)
        assert await term.exit_status() == 0
        await term.wait_for(f"echo: {USER}: second")
        assert term.lines()[:5] == ["Bold claim", "", " • a point", "", f"echo: {USER}: second"]
