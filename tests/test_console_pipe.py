"""`parley chat` in scripts: a real subprocess reading a pipe and writing to one."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.engine import Engine
from bot.models import Author, ConversationKey, Message
from bot.store import Store
from tests.support.cli import environment, spawn_parley
from tests.support.console import USER, chat, saved_replies
from tests.support.llm_server import LLMServer, Script

PIPE = asyncio.subprocess.PIPE


async def test_a_failed_or_cut_off_reply_makes_the_exit_status_1(llm: LLMServer, workdir: Path) -> None:
    llm.enqueue(Script(tokens=["half", " way"], error_after=1), Script(tokens=["fine"]))
    code, out, err = await chat(llm, workdir, b"one\ntwo\n")
    assert code == 1, err
    first, second = out.split("_\n")  # the cut-off reply ends with its note in italics
    assert first.startswith("half\n\n_") and second == "fine\n" and "Traceback" not in err


async def test_input_that_is_not_utf8_stops_with_one_sentence_after_answering_what_came_before(
    llm: LLMServer, workdir: Path
) -> None:
    code, out, err = await chat(llm, workdir, b"\xef\xbb\xbfcaf\xc3\xa9\r\nna\xefve\nnever read\n")
    assert code == 2
    assert out == f"echo: {USER}: café\n"  # the byte-order mark and the CRLF are gone
    assert err == (
        "Line 2 of standard input is not UTF-8 (its byte 3 is 0xef), so parley chat stopped before it; "
        "convert the input to UTF-8 (for example with iconv) and send it again.\n"
    )
    assert len(llm.chat_requests()) == 1


async def test_replies_in_a_pipe_are_plain_text_that_cannot_drive_a_terminal(
    llm: LLMServer, workdir: Path
) -> None:
    hostile = ["**bold** \x1b[1A\x1b[2K", "\x1b]0;title\x07 \x9b31m \x1bc a\x08b\rc\x00\r\n"]
    llm.enqueue(Script(tokens=hostile))
    code, out, err = await chat(llm, workdir, b"hi\n")
    assert code == 0, err
    assert out == "**bold** ␛[1A␛[2K␛]0;title␇ ␛[31m ␛c a␈b␍c␀\n\n"
    assert not any(char in out for char in "\x1b\x07\x08\r\x00\x9b")


async def test_a_reader_that_leaves_early_ends_the_chat_quietly(llm: LLMServer, workdir: Path) -> None:
    # The second reply is held after its first token, so the reader leaves while it streams.
    llm.enqueue(
        Script(tokens=[f"echo: {USER}: one"]), Script(tokens=["two", " more"], gate=asyncio.Semaphore(1))
    )
    read_end, write_end = os.pipe()
    process = await spawn_parley(llm, workdir, "chat", stdin=PIPE, stdout=write_end)
    os.close(write_end)
    assert process.stdin is not None and process.stderr is not None
    process.stdin.write(b"one\n")
    with os.fdopen(read_end, "rb", buffering=0) as replies:
        first = await asyncio.wait_for(asyncio.to_thread(replies.readline), 30)
    assert first == f"echo: {USER}: one\n".encode()  # and the reader has gone, like `head -1`
    process.stdin.write(b"two\nthree\n")
    process.stdin.close()
    assert await asyncio.wait_for(process.wait(), 30) == 0
    assert await process.stderr.read() == b""  # no BrokenPipeError, no "Exception ignored"
    assert len(llm.chat_requests()) == 2  # "three" was never asked
    assert saved_replies(workdir)[1][1] == "cut_off"


async def test_piped_into_head_prints_the_first_line_and_nothing_on_stderr(
    llm: LLMServer, workdir: Path
) -> None:
    script = f"printf 'one\\ntwo\\nthree\\n' | {sys.executable} -m bot chat 2>{workdir}/err | head -1"
    process = await asyncio.create_subprocess_shell(
        script, cwd=workdir, env=environment(llm, workdir), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert out.decode() == f"echo: {USER}: one\n"
    assert (workdir / "err").read_text() == ""


async def test_ctrl_c_during_a_piped_reply_stops_it_and_exits_130(llm: LLMServer, workdir: Path) -> None:
    llm.enqueue(Script(tokens=["The partial", " answer"], stall_after=2))
    process = await spawn_parley(llm, workdir, "chat", stdin=PIPE, stdout=PIPE)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    process.stdin.write(b"tell me\nnever asked\n")
    assert await asyncio.wait_for(process.stdout.readexactly(18), 30) == b"The partial answer"
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 30) == 130
    assert await process.stdout.read() == b"\n\n_Stopped._\n"
    assert await process.stderr.read() == b""
    assert saved_replies(workdir) == [("The partial answer", "cut_off")]
    assert len(llm.chat_requests()) == 1


async def test_ctrl_c_while_a_piped_chat_waits_for_input_exits_at_once(llm: LLMServer, workdir: Path) -> None:
    process = await spawn_parley(llm, workdir, "chat", stdin=PIPE, stdout=PIPE)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    process.stdin.write(b"hello\n")  # the writer stays open: the chat waits for more
    assert await asyncio.wait_for(process.stdout.readline(), 30) == f"echo: {USER}: hello\n".encode()
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 30) == 130
    assert b"Traceback" not in await process.stderr.read()


async def test_help_and_commands_follow_the_platform(engine: Engine) -> None:
    async def ask(platform: str, text: str) -> str:
        key = ConversationKey(platform, "c1")
        message = Message(key, Author("u1", "Ada", is_channel_manager=True), text)
        return (await engine.run_command(message, text.removeprefix("/"))).text

    terminal = await ask("console", "/help")
    assert terminal.startswith("Type a message to talk to Parley. Commands:\n")
    assert "/autoreply" not in terminal and "/model [NAME|default]" in terminal
    assert await ask("console", "/autoreply on") == "/autoreply does not apply here. Try /help."
    assert await ask("console", "/autorepl") == "Unknown command /autorepl. Try /help."
    for chat_app in ("discord", "slack"):
        help_text = await ask(chat_app, "/help")
        assert help_text.startswith("Mention Parley to talk to it.") and "/autoreply [on|off]" in help_text
        assert await ask(chat_app, "/autoreply on") == "Parley will now answer every message in this channel."


async def test_regenerate_answers_the_last_question_again_and_stop_says_nothing_runs(
    llm: LLMServer, workdir: Path
) -> None:
    llm.enqueue(Script(tokens=["First."]), Script(tokens=["Second."]), Script(tokens=["Third."]))
    stdin = b"pick a word\n/regenerate\n/stop\nwhat did you pick?\n"
    code, out, err = await chat(llm, workdir, stdin)
    assert code == 0, err
    assert out.splitlines() == [
        "First.",
        "Second.",
        "Nothing you asked is being answered here right now.",
        "Third.",
    ]
    # The last question was asked with the newest answer only; the first is kept as an alternative.
    sent = [m["content"] for m in llm.chat_requests()[-1].json["messages"] if m["role"] != "system"]
    assert sent == [f"{USER}: pick a word", "Second.", f"{USER}: what did you pick?"]
    assert [content for content, _ in saved_replies(workdir)] == ["First.", "Second.", "Third."]


async def test_compare_prints_both_answers_labelled_then_asks_for_the_vote(
    llm: LLMServer, workdir: Path
) -> None:
    llm.by_model["openai/gpt-4o-mini"] = Script(tokens=["Four", " (mini)."])
    llm.by_model["xiaomi/mimo-v2-flash"] = Script(tokens=["4", " (mimo)."])
    mini, mimo = "openrouter/openai/gpt-4o-mini", "openrouter/xiaomi/mimo-v2-flash"
    lines = f"/compare {mini} {mimo} What is 2+2?\n/vote b\n/vote a\n/arena\n".encode()
    code, out, err = await chat(llm, workdir, lines)
    assert code == 0, err
    assert out.startswith("**Answer A**\n\n")
    first, second = out.split("**Answer B**\n\n")
    answer_a = first.removeprefix("**Answer A**\n\n").strip()
    answer_b, rest = second.split("\n", 1)
    assert {answer_a, answer_b} == {"Four (mini).", "4 (mimo)."}
    model_a, model_b = (mini, mimo) if answer_a == "Four (mini)." else (mimo, mini)
    ballot, voted, again, *board = rest.strip("\n").split("\n")
    assert ballot.startswith("Which answer is better? Type /vote a")
    assert voted == f"Thanks: you voted B is better. A was {model_a}, B was {model_b}."
    assert again.startswith("You already voted on this comparison (B is better)")
    assert board[0].startswith("Arena of the terminal: 1 vote (0 both bad, not rated).")
    assert board[1] == f"1. {model_b} — not rated yet (1 rated vote: 1 won, 0 lost, 0 tied; 0 both bad)"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_terminal_chat_on_postgresql_beats_its_heartbeat(
    llm: LLMServer, workdir: Path, database_url: str
) -> None:
    """Another instance takes the replies of one whose heartbeat stopped as a dead one's: `parley chat`
    beats its own while it runs."""
    process = await spawn_parley(
        llm,
        workdir,
        "chat",
        stdin=PIPE,
        stdout=PIPE,
        DATABASE_URL=database_url,
        INSTANCE_HEARTBEAT_SECONDS="0.2",
    )
    store = await Store.open(database_url)
    try:
        beaten = text(
            "SELECT count(*) FROM instances WHERE id <> :me AND heartbeat_at > started_at + 0.5"
        ).bindparams(me=store.instance_id)
        async with asyncio.timeout(60):
            while not await store.read(lambda conn: conn.execute(beaten).scalar_one()):
                await asyncio.sleep(0.05)
    finally:
        await store.close()
    out, _err = await asyncio.wait_for(process.communicate(b"hello\n"), 60)
    assert process.returncode == 0 and out.decode().strip() == "echo: " + f"{USER}: hello"
