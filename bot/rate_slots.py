"""Request budgets shared by the instances on one PostgreSQL, kept by the database's clock.

Every instance paces its renders against its own copy of each budget (bot/streaming.py). On PostgreSQL
a render also takes its slots here, one statement a slot, and each answer brings back the budget's recent
requests, so the local copy shows what every instance spent. A budget of `capacity` requests per window
is `capacity` rows, each holding when it was last used; a request takes a row last used a whole window
ago, so no window ever holds more than `capacity`, whichever instances sent them. Times are the
database's: instances' clocks differ, and one that ran fast would spend slots before they are free.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from bot.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

# Takes the oldest row free for a whole window, after leaving `keep` free rows to others (an edit
# leaves room for finals and first texts); rows another reply is taking are skipped, not waited for.
# The answer also carries the budget's requests still in the window and how many rows it has.
_TAKE = text(
    """
    WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now),
    free AS (
        SELECT s.key, s.slot FROM rate_slots AS s, clock
        WHERE s.key = :key AND s.slot < :capacity AND s.used_at <= clock.now - :window
        ORDER BY s.used_at, s.slot
        LIMIT 1 OFFSET :keep
        FOR UPDATE OF s SKIP LOCKED
    ),
    taken AS (
        UPDATE rate_slots AS r SET used_at = clock.now FROM free, clock
        WHERE r.key = free.key AND r.slot = free.slot
        RETURNING r.slot, r.used_at
    )
    SELECT (SELECT slot FROM taken) AS slot, (SELECT used_at FROM taken) AS used_at, clock.now,
        ARRAY(
            SELECT clock.now - used_at FROM rate_slots
            WHERE key = :key AND slot < :capacity AND used_at > clock.now - :window
        ) AS ages,
        (SELECT count(*) FROM rate_slots WHERE key = :key AND slot < :capacity) AS rows
    FROM clock
    """
)
_ADD_ROWS = text(
    "INSERT INTO rate_slots (key, slot, used_at) "
    "SELECT :key, n, 0 FROM generate_series(0, :capacity - 1) AS n ON CONFLICT DO NOTHING"
)
_GIVE_BACK = text(
    "UPDATE rate_slots SET used_at = 0 WHERE key = :key AND slot = :slot AND used_at = :used_at"
)

# A budget nobody drew on for a day is forgotten (its rows come back at its next request).
_FORGET = text(
    "DELETE FROM rate_slots WHERE key IN (SELECT key FROM rate_slots GROUP BY key "
    "HAVING max(used_at) < extract(epoch FROM clock_timestamp()) - :idle)"
)
IDLE_SECONDS = 24 * 3600.0
# A database slower than this to answer (unreachable, overloaded) is taken for failed: a render never
# waits long on the shared budgets.
TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Taken:
    """A slot taken (`slot` and `used_at`), or None for both when the budget had no room; `ages` says how
    long ago, in seconds, each request still in the window went (this one included)."""

    slot: int | None
    used_at: float | None
    ages: list[float]


class SharedSlots:
    """The budgets' rows, through the store's transactions; a database error leaves the pacing to each
    instance's own copy (with a warning), never fails a reply."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._failing = False

    async def take(self, key: str, capacity: int, window: float, keep: int = 0) -> Taken | None:
        """One slot of `key`, if it has room beside `keep` free slots; None when the database failed."""

        def take(conn: Connection) -> Taken:
            params = {"key": key, "capacity": capacity, "window": window, "keep": keep}
            row = conn.execute(_TAKE, params).one()
            if row.rows < capacity:  # a budget seen for the first time (or grown): its rows, then again
                conn.execute(_ADD_ROWS, {"key": key, "capacity": capacity})
                row = conn.execute(_TAKE, params).one()
            ages = list(row.ages) + ([0.0] if row.slot is not None else [])
            return Taken(row.slot, row.used_at, ages)

        return await self._guarded(take, key)

    async def give_back(self, key: str, taken: Taken) -> None:
        """Free a slot a render did not use (unless it was taken again meanwhile)."""
        if taken.slot is None:
            return

        def give_back(conn: Connection) -> None:
            conn.execute(_GIVE_BACK, {"key": key, "slot": taken.slot, "used_at": taken.used_at})

        await self._guarded(give_back, key)

    async def forget_idle(self, idle_seconds: float = IDLE_SECONDS) -> int:
        """Delete the rows of budgets unused for `idle_seconds` (a quiet channel's); how many rows."""

        def forget(conn: Connection) -> int:
            return int(conn.execute(_FORGET, {"idle": idle_seconds}).rowcount)

        return await self._guarded(forget, "idle budgets") or 0

    async def _guarded(self, work: Callable[[Connection], T], key: str) -> T | None:
        try:
            result = await asyncio.wait_for(self._store.write(work), TIMEOUT_SECONDS)
        except (OSError, SQLAlchemyError, TimeoutError) as error:
            if not self._failing:
                log.warning(
                    "shared rate budgets unavailable (%s); pacing %s and others by this instance alone",
                    type(error).__name__,
                    key,
                )
            self._failing = True
            return None
        if self._failing:
            log.warning("shared rate budgets are back")
            self._failing = False
        return result
