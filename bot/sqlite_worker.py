"""SQLite work on one connection in a thread of its own, one whole transaction at a time.

SQLite takes one writer at a time. A pool of connections racing for that lock, each transaction
hopping back to the event loop between statements, failed replies under load with "database is
locked". Here a transaction is a plain function the thread runs from BEGIN to COMMIT without yielding,
in the order they were asked for: the process's writes never contend, and each costs one hop off the
loop. The store keeps one worker that writes and, for a file, one that reads (WAL lets it read while
the other writes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import ResourceClosedError

T = TypeVar("T")


class SQLiteWorker:
    def __init__(self, engine: Engine, name: str, begin: str) -> None:
        """`begin` starts each transaction: BEGIN IMMEDIATE to write (the write lock is taken first, so
        another process's write waits out the busy timeout instead of failing part way), BEGIN to read
        (one snapshot for the whole function)."""
        self._engine = engine
        self._begin = begin
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._connection: Connection | None = None  # opened in the thread, used and closed only there
        self._closed = False

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run `work` as one transaction: committed when it returns, rolled back when it raises.

        A caller cancelled meanwhile does not stop it: the transaction still ends whole."""
        if self._closed:
            raise ResourceClosedError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._transaction, work)

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        if self._connection is None:
            self._connection = self._engine.connect()
        connection = self._connection
        with connection.begin():
            connection.exec_driver_sql(self._begin)
            return work(connection)

    async def close(self) -> None:
        """Close the connection (in its thread) and end the thread; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
