"""SQLite work on one connection in a thread of its own, the transactions asked for meanwhile committed
together.

SQLite takes one writer at a time. A pool of connections racing for that lock, each transaction
hopping back to the event loop between statements, failed replies under load with "database is
locked". Here a transaction is a plain function the thread runs without yielding, in the order they
were asked for: the process's writes never contend, and each costs one hop off the loop. The store
keeps one worker that writes and, for a file, one that reads (WAL lets it read while the other writes).

Group commit: the functions waiting when the thread takes its next one run in one BEGIN … COMMIT,
each inside a savepoint of its own, so one that raises is rolled back alone and only its caller gets
the error. Every caller of a group is answered after its COMMIT (a COMMIT that fails fails them all),
with one wake-up of the event loop for the whole group. Under load this saves a BEGIN, a COMMIT and a
wake-up per transaction; alone, a function runs as its own group at once.

WAL checkpoints (copying the log's pages back into the database file, with two fsyncs) run in a thread
of their own, on a connection of their own, a moment after something was written. Left to SQLite, the
commit that takes the log past 1,000 pages runs one itself: every second or so under load, the writer
stopped 5–16 ms while the accepts queued behind it waited. The writer runs one itself only when the
log has grown far past that (the checkpoint thread fell behind or failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import ResourceClosedError

T = TypeVar("T")
log = logging.getLogger(__name__)

# The most functions one transaction carries: a bound on how long the write lock is held at a time,
# and on how much one failed COMMIT takes down with it.
GROUP_LIMIT = 16
# The checkpoint thread copies what was written at most this often (seconds)...
CHECKPOINT_INTERVAL = 0.2
# ... and the writer checkpoints the log itself only past this many pages (SQLite's default: 1,000).
WRITER_CHECKPOINT_PAGES = 20_000


@dataclass(slots=True)
class _Job(Generic[T]):
    work: Callable[[Connection], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]


# A job, and its error or its result.
_Outcome = tuple[_Job[Any], BaseException | None, Any]
_STOP = object()  # queued by close(), after every function already asked for


class SQLiteWorker:
    def __init__(self, engine: Engine, name: str, begin: str, *, checkpoints: bool = False) -> None:
        """`begin` starts each transaction: BEGIN IMMEDIATE to write (the write lock is taken first, so
        another process's write waits out the busy timeout instead of failing part way), BEGIN to read
        (one snapshot for the whole group). `checkpoints`: a writer of a WAL file, whose checkpoints
        run in a thread of their own."""
        self._engine = engine
        self._begin = begin
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._connection: Connection | None = None  # opened in the thread, used and closed only there
        self._closed = False
        # The mailbox of each event loop that asked for something (a store's), used only in the thread.
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}
        # A daemon: a store never closed must not keep the process from exiting (SQLite rolls back a
        # transaction cut short).
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._written = threading.Event()  # set after each commit, for the checkpoint thread
        self._stopping = threading.Event()
        self._checkpoints = (
            threading.Thread(target=self._checkpoint, name=f"{name}-checkpoints", daemon=True)
            if checkpoints
            else None
        )
        self._thread.start()
        if self._checkpoints is not None:
            self._checkpoints.start()

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run `work` as one transaction: committed when it returns, rolled back when it raises.

        A caller cancelled before its function started drops it; once started, it ends whole."""
        if self._closed:
            raise ResourceClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(work, loop, future))
        return await future

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            group = [first]
            while len(group) < GROUP_LIMIT:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                group.append(job)
            self._answer(self._transaction([job for job in group if not job.future.cancelled()]))
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _transaction(self, group: list[_Job[Any]]) -> list[_Outcome]:
        """Run the group's functions in one transaction; each job with its error or its result."""
        if not group:
            return []
        done: list[_Outcome] = []
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
                if self._checkpoints is not None:
                    driver = self._connection.connection.dbapi_connection
                    assert driver is not None
                    driver.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
            connection = self._connection
            with connection.begin():
                connection.exec_driver_sql(self._begin)
                if len(group) == 1:  # alone, its transaction is its savepoint: two statements less
                    done.append((group[0], None, group[0].work(connection)))
                else:
                    driver = connection.connection.dbapi_connection
                    assert driver is not None
                    for job in group:
                        done.append(_savepoint(driver, connection, job))
        except BaseException as error:  # no BEGIN, no COMMIT, or a lone function raised: nothing was kept
            self._end_transaction()
            return [(job, error, None) for job in group]
        self._written.set()
        return done

    def _end_transaction(self) -> None:
        """Leave the connection out of any transaction. A COMMIT that SQLite refused (a deferred
        constraint) keeps its transaction open, and SQLAlchemy counts it as ended all the same; left
        so, every later BEGIN would fail. A connection that cannot even roll back is opened anew."""
        if self._connection is None:
            return
        driver = self._connection.connection.dbapi_connection
        try:
            if driver is not None and driver.in_transaction:  # type: ignore[attr-defined]
                driver.rollback()
        except sqlite3.Error:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None

    def _answer(self, done: list[_Outcome]) -> None:
        """Hand each caller its outcome: one wake-up of its event loop for the whole group, or none when
        the loop has yet to take what an earlier group sent."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in done:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, outcomes in by_loop.items():
            mailbox = self._mailboxes.get(loop)
            if mailbox is None:
                mailbox = self._mailboxes[loop] = _Mailbox(loop)
            mailbox.send(outcomes)

    def _checkpoint(self) -> None:
        """Checkpoint the WAL a moment after each write, PASSIVE: it copies what no reader still needs
        and never waits for the writer, which goes on writing meanwhile (and starts the log over once a
        checkpoint has copied all of it). One that fails is logged and made again after the next write."""
        driver: Any = None
        while not self._stopping.is_set():
            self._written.wait()
            self._written.clear()
            if self._stopping.is_set():
                break
            try:
                if driver is None:
                    driver = self._engine.raw_connection()
                driver.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
            except sqlite3.Error:
                log.warning("a WAL checkpoint failed; the next write tries again", exc_info=True)
                with contextlib.suppress(Exception):
                    driver.close()
                driver = None
            self._stopping.wait(CHECKPOINT_INTERVAL)  # writes meanwhile wait for the next one
        if driver is not None:
            driver.close()

    async def close(self) -> None:
        """Run what was asked for before, close the connections (each in its thread) and end the
        threads; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        if self._checkpoints is not None:
            self._stopping.set()
            self._written.set()
            await asyncio.to_thread(self._checkpoints.join)


def _savepoint(driver: Any, connection: Connection, job: _Job[Any]) -> _Outcome:
    """Run one function of a group inside a savepoint: rolled back alone when it raises. The savepoint
    statements go straight to the driver (the group's transaction is SQLAlchemy's; these are not)."""
    driver.execute("SAVEPOINT parley_call")
    try:
        result = job.work(connection)
    except BaseException as error:
        # When SQLite has rolled back the whole transaction itself (a full disk, an I/O error), there
        # is no savepoint left: that raises here, and the group fails whole.
        driver.execute("ROLLBACK TO parley_call")
        driver.execute("RELEASE parley_call")
        return job, error, None
    driver.execute("RELEASE parley_call")
    return job, None, result


class _Mailbox:
    """The outcomes on their way to one event loop's callers. The groups that finish before that loop has
    taken what the first of them sent share its wake-up, so a thread whose loop is behind does not wake
    it again for every group (each wake-up is a write to the loop's socket, and the thread then waits for
    the interpreter lock the woken loop has taken)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._outcomes: list[_Outcome] = []

    def send(self, outcomes: list[_Outcome]) -> None:
        with self._lock:
            woken = bool(self._outcomes)
            self._outcomes.extend(outcomes)
        if not woken:
            with contextlib.suppress(RuntimeError):  # the caller's loop has closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
        for job, error, result in outcomes:
            if job.future.cancelled():
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
