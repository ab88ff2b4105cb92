"""`parley run` killed while replies stream, then started again on the same database: nothing lost,
nothing answered twice, and no reply left half-written on Discord."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

from bot.engine import RESTARTED_NOTE
from tests.support.cli import environment
from tests.support.discord_emulator import ALICE, BOB, BOT_ID, GENERAL, RANDOM, ROOMS, DiscordEmulator, until
from tests.support.llm_server import LLMServer, Script

MENTION = {"id": str(BOT_ID), "username": "parley", "global_name": "Parley"}
CHANNELS = [GENERAL, RANDOM, *ROOMS[:3]]
CAROL = {"id": str(100_000_000_000_000_000 + 1003), "username": "carol", "global_name": "Carol"}
DAN = {"id": str(100_000_000_000_000_000 + 1004), "username": "dan", "global_name": "Dan"}
PEOPLE = [ALICE, BOB, CAROL, DAN]
SHOWN = "Part one. Part two."  # what each reply under way shows when the process dies


async def start_parley(
    llm: LLMServer, workdir: Path, discord_api: DiscordEmulator, log: Path
) -> asyncio.subprocess.Process:
    """`parley run` against the loopback Discord; returns once it has connected."""
    env = environment(
        llm,
        workdir,
        DISCORD_TOKEN="discord-very-secret",
        DISCORD_API_BASE=discord_api.api_base,
        DISCORD_GATEWAY_URL=discord_api.gateway_url,
    )
    discord_api.ready.clear()
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", cwd=workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        await asyncio.wait_for(discord_api.ready.wait(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process


def stored(database: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as db:
        return db.execute(query).fetchall()


async def test_a_crash_while_replies_stream_loses_no_message_and_answers_none_twice(
    llm: LLMServer, workdir: Path
) -> None:
    log = workdir / "parley.log"
    database = workdir / "data" / "parley.db"
    async with DiscordEmulator() as discord_api:
        first = await start_parley(llm, workdir, discord_api, log)
        try:
            # Two people in each of five channels, two questions each: each person's second question waits
            # behind their first, whose reply streams two sentences and then hangs until the process dies.
            llm.enqueue(
                *[Script(tokens=["Part one.", " Part two.", " Never."], delay=0.3, stall_after=2)] * 10
            )
            asked: dict[str, tuple[int, str, str]] = {}  # mention id: channel, person, question
            for index, channel in enumerate(CHANNELS):
                people = PEOPLE[index % 4], PEOPLE[(index + 1) % 4]
                for turn in (1, 2):
                    for person in people:
                        question = f"q{turn} from {person['global_name']} in {channel}"
                        sent = await discord_api.send_message(
                            channel, f"<@{BOT_ID}> {question}", mentions=[MENTION], author=person
                        )
                        asked[sent] = (channel, str(person["global_name"]), question)
            firsts = [sent for sent, (_, _, question) in asked.items() if question.startswith("q1")]
            queued = [sent for sent in asked if sent not in firsts]

            def streaming() -> bool:
                shown = [discord_api.replies_to(sent) for sent in firsts]
                return all(len(r) == 1 and r[0]["content"] == SHOWN for r in shown)

            # A reply's row is written at its first render, with where it shows, beside the renders
            # after it; the text shown is saved with the next batch of checkpoints.
            await until(streaming, seconds=60)
            checkpointed = "SELECT content FROM turns WHERE role = 'assistant' AND outcome = 'streaming'"
            await until(
                lambda: [row[0] for row in stored(database, checkpointed)] == [SHOWN] * 10, seconds=30
            )
            assert len(llm.chat_requests()) == 10 and not any(discord_api.replies_to(s) for s in queued)
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()
        assert first.returncode == -signal.SIGKILL

        # Every message was stored when it arrived, the queued ones too, with its user turn.
        rows = stored(database, "SELECT message_id, state, turn_id FROM inbox ORDER BY id")
        assert sorted(row[0] for row in rows) == sorted(asked) and {row[1] for row in rows} == {"pending"}
        assert all(row[2] is not None for row in rows)
        assert len(stored(database, "SELECT id FROM turns WHERE role = 'user'")) == 20

        second = await start_parley(llm, workdir, discord_api, log)
        try:
            note = f"_{RESTARTED_NOTE}_"

            def recovered() -> bool:
                repaired = [discord_api.replies_to(sent) for sent in firsts]
                answered = [discord_api.replies_to(sent) for sent in queued]
                closed = {row[0] for row in stored(database, "SELECT state FROM inbox")} == {"done"}
                return (
                    closed
                    and all(len(r) == 1 and r[0]["content"].endswith(note) for r in repaired)
                    and all(len(r) == 1 and r[0]["content"].startswith("echo:") for r in answered)
                )

            await until(recovered, seconds=90)
            for sent in firsts:  # what was stored of it (all it showed), then the note
                (reply,) = discord_api.replies_to(sent)
                assert reply["content"] == f"{SHOWN}\n\n{note}"
            for sent in queued:
                _, person, question = asked[sent]
                assert [r["content"] for r in discord_api.replies_to(sent)] == [f"echo: {person}: {question}"]
            # Nothing was asked twice, and a queued question was answered knowing what came before it.
            assert len(llm.chat_requests()) == 20
            later = next(r for r in llm.chat_requests()[10:] if "q2 from Bob" in str(r.json["messages"][-1]))
            assert "q1 from Bob" in str(later.json["messages"]) and "Part one." in str(later.json["messages"])
            bot_messages = [m for channel in CHANNELS for m in discord_api.messages_in(channel)]
            assert len(bot_messages) == 20  # one reply message per mention, no second post
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), 30)
    errors = log.read_text()
    assert second.returncode == 0, errors
    assert "Traceback" not in errors and "very-secret" not in errors
