"""`parley chat` as a person runs it: in a terminal, or with its input and output piped."""

from __future__ import annotations

import asyncio
import getpass
import sqlite3
import sys
from pathlib import Path

from tests.support.cli import environment, spawn_parley
from tests.support.llm_server import LLMServer
from tests.support.terminal import Terminal

USER = getpass.getuser()
LEFT, UP, CTRL_C, CTRL_D, ENTER = "\x1b[D", "\x1b[A", "\x03", "\x04", "\r"


async def start_chat(term: Terminal, llm: LLMServer, cwd: Path, **env: str) -> None:
    await term.spawn([sys.executable, "-m", "bot", "chat"], cwd=cwd, env=environment(llm, cwd, **env))
    await term.wait_for_prompt()


def sent(llm: LLMServer) -> list[str]:
    """What each chat request asked: its last user message."""
    return [request.json["messages"][-1]["content"] for request in llm.chat_requests()]


async def chat(llm: LLMServer, cwd: Path, stdin: bytes) -> tuple[int, str, str]:
    pipe = asyncio.subprocess.PIPE
    process = await spawn_parley(llm, cwd, "chat", stdin=pipe, stdout=pipe)
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def saved_replies(cwd: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(cwd / "data" / "parley.db") as db:
        query = "SELECT content, outcome FROM turns WHERE role = 'assistant' ORDER BY id"
        return db.execute(query).fetchall()
