"""Store requests of one kind sent in batches: every request made while a batch is out goes into the next.

On PostgreSQL every statement's work is the event loop's own, and each waits for a pooled connection: a
burst of a thousand replies asking for the same kind of statement made a thousand of them in a row, each
waiting a pass of the loop that streams the first replies. Asked together they make a few. A failed batch
fails each of its requests; a requester cancelled before its batch goes out is left out of it, one
cancelled while it is out gets nothing (what the batch did for it stays done).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class Batches(Generic[A, R]):
    """One task sends whatever is waiting with `send` (one answer per request, in order), and starts
    again while more arrived meanwhile."""

    def __init__(self, send: Callable[[list[A]], Awaitable[Sequence[R]]], name: str) -> None:
        self._send_batch = send
        self._name = name
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def __call__(self, request: A) -> R:
        """The answer to `request`, or what sending its batch raised."""
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, answer))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(), name=self._name)
        return await answer

    async def _send(self) -> None:
        while self._waiting:
            batch = [(request, answer) for request, answer in self._waiting if not answer.cancelled()]
            self._waiting = []
            if not batch:
                continue
            try:
                answers = await self._send_batch([request for request, _ in batch])
            except Exception as error:
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)
                continue
            except BaseException:  # the sender cancelled (the loop closing): nobody waits for ever
                for _, answer in batch:
                    answer.cancel()
                raise
            for (_, answer), found in zip(batch, answers, strict=True):
                if not answer.done():
                    answer.set_result(found)
