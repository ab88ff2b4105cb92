"""Conversation turns shared by the instances on PostgreSQL, taken and given back in batches.

A person's turn in a conversation is a session advisory lock held on a connection of this instance's
own. Asked for one statement at a time, a burst of a thousand messages made two thousand statements in a
row on that connection, each waiting a pass of a busy event loop: the last message waited seconds for a
turn nobody held. Here every turn asked for while a statement is out goes into the next one, and turns
given back alike, so a burst takes its turns in a few round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from bot.advisory_keys import advisory_key

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger(__name__)

# One row per turn asked for: its lock tried, then whether the person has an earlier message here still
# unanswered on any instance (the inbox's order is the order messages were accepted in); a lock taken
# for a turn that is not yet due is given back in the same statement. The CTEs are materialised so that
# each lock is tried exactly once, before the inbox is looked at.
_TAKE = text(
    """
    WITH asked AS MATERIALIZED (
        SELECT a.n, a.inbox_id, a.conversation, a.author_id, a.key, pg_try_advisory_lock(a.key) AS got
        FROM unnest(
            CAST(:inbox_ids AS bigint[]), CAST(:conversations AS text[]),
            CAST(:author_ids AS text[]), CAST(:keys AS bigint[])
        ) WITH ORDINALITY AS a(inbox_id, conversation, author_id, key, n)
    ), judged AS MATERIALIZED (
        SELECT asked.n, asked.key, asked.got, asked.got AND NOT EXISTS (
            SELECT 1 FROM inbox
            WHERE inbox.conversation = asked.conversation AND inbox.author_id = asked.author_id
              AND inbox.state = 'pending' AND inbox.id < asked.inbox_id
        ) AS turn
        FROM asked
    )
    SELECT judged.turn, CASE WHEN judged.got AND NOT judged.turn THEN pg_advisory_unlock(judged.key) END
    FROM judged ORDER BY judged.n
    """
)
_GIVE = text("SELECT pg_advisory_unlock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")


@dataclass
class _Ask:
    inbox_id: int
    conversation: str
    author_id: str
    key: int
    answer: asyncio.Future[bool]


class TurnLocks:
    """Take and give back turns; one task sends whatever is waiting, gives before takes, one statement
    each, and starts again while more arrived meanwhile."""

    def __init__(self, connect: Callable[[], Awaitable[AsyncConnection]]) -> None:
        self._connect = connect
        self._connection: AsyncConnection | None = None
        self._asks: list[_Ask] = []
        self._gives: list[tuple[int, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def take(self, conversation: str, author_id: str, inbox_id: int) -> bool:
        """Whether this instance now holds the person's turn for message `inbox_id`: False while another
        instance holds it, an earlier message of theirs is unanswered, or the database is out of reach
        (the caller looks again later). A caller cancelled while waiting holds nothing."""
        answer = asyncio.get_running_loop().create_future()
        self._asks.append(_Ask(inbox_id, conversation, author_id, _key(conversation, author_id), answer))
        self._send_soon()
        return await answer

    async def give(self, conversation: str, author_id: str) -> None:
        """Give the turn back; sent even when the caller is cancelled meanwhile."""
        done = asyncio.get_running_loop().create_future()
        self._gives.append((_key(conversation, author_id), done))
        self._send_soon()
        await asyncio.shield(done)

    async def close(self) -> None:
        """Close the connection, and every turn held on it with it."""
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        await self._disconnect()

    def _send_soon(self) -> None:
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name="turn locks")

    async def _send(self) -> None:
        while self._gives or self._asks:
            gives, self._gives = self._gives, []
            asks, self._asks = [ask for ask in self._asks if not ask.answer.cancelled()], []
            try:
                taken = await self._sent(gives, asks)
            except BaseException as error:  # cancelled (closing) or a defect: nobody waits for ever
                _fail([done for _, done in gives] + [ask.answer for ask in asks], error)
                raise
            for _, done in gives:
                if not done.done():
                    done.set_result(None)
            for ask, turn in zip(asks, taken, strict=True):
                if not ask.answer.cancelled():
                    ask.answer.set_result(turn)
                elif turn:  # its caller has gone: give back what it was given
                    self._gives.append((ask.key, asyncio.get_running_loop().create_future()))

    async def _sent(self, gives: list[tuple[int, asyncio.Future[None]]], asks: list[_Ask]) -> list[bool]:
        """Send the gives, then the takes; every take counts as not taken when the connection fails (it
        is closed then, so it holds nothing)."""
        try:
            if self._connection is None:
                self._connection = await self._connect()
            if gives:
                await self._connection.execute(_GIVE, {"keys": [key for key, _ in gives]})
            if not asks:
                return []
            rows = await self._connection.execute(
                _TAKE,
                {
                    "inbox_ids": [ask.inbox_id for ask in asks],
                    "conversations": [ask.conversation for ask in asks],
                    "author_ids": [ask.author_id for ask in asks],
                    "keys": [ask.key for ask in asks],
                },
            )
            return [bool(row[0]) for row in rows]
        except (OSError, SQLAlchemyError) as error:
            reason = str(getattr(error, "orig", None) or error).split("\n", 1)[0] or type(error).__name__
            log.warning("lost the connection that holds conversation locks (%s); reconnecting", reason)
            await self._disconnect()
            return [False] * len(asks)

    async def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError, SQLAlchemyError):
                await self._connection.close()
        self._connection = None


def _key(conversation: str, author_id: str) -> int:
    return advisory_key(f"turn:{conversation}:{author_id}")


def _fail(futures: list[asyncio.Future[Any]], error: BaseException) -> None:
    for future in futures:
        if future.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(error)
