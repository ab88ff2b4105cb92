"""Budgets per person, channel and server, per day or month, in USD or tokens.

A reply starts only while what was spent plus what the replies under way have reserved is below every
budget that applies; it reserves its own estimate (its prompt and the room kept for its answer) before
anything is sent to the provider, and the reservation is settled once its real usage is recorded. So two
replies racing at the edge of a budget cannot both pass. On SQLite (one process) reservations live in
the process: a crash releases them. On PostgreSQL, where several instances answer against one budget,
they are rows of `budget_holds`, checked and taken under a transaction's advisory lock per target, and an
instance's rows stop counting when its heartbeat stops. The usage already recorded stays counted.
Periods are UTC days and months.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, delete, func, insert, or_, select, text
from sqlalchemy.exc import SQLAlchemyError

from bot.access import Refused
from bot.advisory_keys import advisory_key
from bot.config import BudgetDefaults
from bot.models import CommandResult, Message
from bot.schema import budget_holds
from bot.store import spent_query

if TYPE_CHECKING:
    from bot.engine import Engine
    from bot.store import Store

log = logging.getLogger(__name__)

SCOPES = ("person", "channel", "server")
PERIODS = ("daily", "monthly")
UNITS = ("usd", "tokens")
WARN_AT = 0.8


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str  # person, channel or server
    target: str  # "platform:id"
    period: str  # daily or monthly
    unit: str  # usd or tokens
    amount: float
    set_here: bool  # set with /budget, not a `[budgets]` default


@dataclass(frozen=True, slots=True)
class Standing:
    """A budget and what is spent against it in its current period."""

    limit: Limit
    used: float
    resets: datetime


@dataclass(slots=True)
class Reservation:
    """What one reply holds against its budgets until its usage is recorded."""

    targets: list[tuple[str, str]]  # (scope, target)
    usd: float
    tokens: int
    warning: str | None = None
    settled: bool = field(default=False)
    held_as: str | None = None  # its rows in budget_holds (PostgreSQL)


def targets_of(message: Message) -> list[tuple[str, str]]:
    key = message.key
    found = [
        ("person", f"{key.platform}:{message.author.id}"),
        ("channel", f"{key.platform}:{key.channel_id}"),
    ]
    if message.server_id:
        found.append(("server", f"{key.platform}:{message.server_id}"))
    return found


def override_targets(message: Message) -> list[tuple[str, str]]:
    """The targets /budget can set a budget for (a person's come from the defaults alone)."""
    return [target for target in targets_of(message) if target[0] != "person"]


def period_start(period: str, now: float) -> datetime:
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "daily" else day.replace(day=1)


def period_end(period: str, now: float) -> datetime:
    start = period_start(period, now)
    if period == "daily":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


def amount_text(unit: str, value: float) -> str:
    return f"${value:,.2f}" if unit == "usd" else f"{int(value):,} tokens"


def server_word(platform: str) -> str:
    return "workspace" if platform == "slack" else "server"


class Budgets:
    def __init__(
        self,
        store: Store,
        defaults: BudgetDefaults,
        clock: Callable[[], float] = time.time,
        dead_after: float = 10.0,  # INSTANCE_TIMEOUT_SECONDS: a silent instance's holds stop counting
    ) -> None:
        self._store = store
        self._defaults = defaults
        self._clock = clock
        self._dead_after = dead_after
        self._lock = asyncio.Lock()  # a check and its reservation are one step
        self._reserved: dict[tuple[str, str], list[float]] = {}  # (scope, target) -> [usd, tokens]

    async def limits(self, message: Message, overrides: list[dict[str, Any]] | None = None) -> list[Limit]:
        """Every budget that applies to a message: /budget's for its channel and server (`overrides`, when
        the reply read them already), else the defaults."""
        targets = targets_of(message)
        if overrides is None:
            overrides = await self._store.budget_overrides(override_targets(message))
        amounts = {
            (row["scope"], row["target"], row["period"], row["unit"]): row["amount"] for row in overrides
        }
        found = []
        for scope, target in targets:
            for period in PERIODS:
                for unit in UNITS:
                    name = (scope, target, period, unit)
                    if name in amounts:
                        amount, set_here = amounts[name], True
                    else:
                        amount, set_here = getattr(self._defaults, f"{scope}_{period}_{unit}"), False
                    if amount is not None:
                        found.append(Limit(scope, target, period, unit, float(amount), set_here))
        return found

    async def standing(self, message: Message) -> list[Standing]:
        now = self._clock()
        limits = await self.limits(message)
        used = await self._used(limits, now)
        return [
            Standing(limit, spent, period_end(limit.period, now))
            for limit, spent in zip(limits, used, strict=True)
        ]

    async def reserve(
        self, message: Message, usd: float, tokens: int, overrides: list[dict[str, Any]] | None = None
    ) -> Reservation:
        """Hold a reply's estimate against its budgets; Refused, in one sentence, when one is used up."""
        now = self._clock()
        warning = None
        limits = await self.limits(message, overrides)
        if not limits:  # nothing to hold against: no lock, so replies without budgets never queue here
            return Reservation([], 0.0, 0)
        if self._store.shared:
            return await self._reserve_shared(message, limits, usd, tokens, now)
        async with self._lock:
            for limit, used in zip(limits, await self._used(limits, now), strict=True):
                held = self._reserved.get((limit.scope, limit.target), [0.0, 0])[UNITS.index(limit.unit)]
                if used + held >= limit.amount:
                    raise Refused(refusal(message, limit, used, period_end(limit.period, now)))
                if warning is None and used >= WARN_AT * limit.amount:
                    warning = await self._warn_once(message, limit, used, now)
            targets = targets_of(message)
            for target in targets:
                held = self._reserved.setdefault(target, [0.0, 0])
                held[0] += usd
                held[1] += tokens
        return Reservation(targets, usd, tokens, warning)

    async def _reserve_shared(
        self, message: Message, limits: list[Limit], usd: float, tokens: int, now: float
    ) -> Reservation:
        targets = targets_of(message)
        live = ~self._store.orphaned(budget_holds.c.instance, self._dead_after)
        hold = SharedHold(targets, usd, tokens, self._store.instance_id, now)
        over, warn = await self._store.write(lambda conn: hold.take(conn, limits, live))
        if over is not None:
            limit, used = over
            raise Refused(refusal(message, limit, used, period_end(limit.period, now)))
        warning = await self._warn_once(message, *warn, now) if warn is not None else None
        return Reservation(targets, usd, tokens, warning, held_as=hold.reservation)

    async def settle(self, reservation: Reservation) -> None:
        """Release a reservation: its reply's real usage is recorded (or it spent nothing)."""
        if reservation.settled:
            return
        reservation.settled = True
        if reservation.held_as is not None:
            which = budget_holds.c.reservation == reservation.held_as
            try:
                await self._store.write(lambda conn: conn.execute(delete(budget_holds).where(which)))
            except (OSError, SQLAlchemyError):
                # It goes on counting while this instance lives: too much held, never too little.
                log.exception("could not release a reply's budget hold %s", reservation.held_as)
            return
        for target in reservation.targets:
            held = self._reserved[target]
            held[0] -= reservation.usd
            held[1] -= reservation.tokens
            if held[0] <= 1e-12 and held[1] <= 0:
                del self._reserved[target]

    async def _used(self, limits: list[Limit], now: float) -> list[float]:
        """What each budget's target spent in its period: one query per target and period."""
        spent: dict[tuple[str, str, str], tuple[float, int]] = {}
        used = []
        for limit in limits:
            key = (limit.scope, limit.target, limit.period)
            if key not in spent:
                since = period_start(limit.period, now).timestamp()
                spent[key] = await self._store.spent(limit.scope, limit.target, since)
            usd, tokens = spent[key]
            used.append(usd if limit.unit == "usd" else float(tokens))
        return used

    async def _warn_once(self, message: Message, limit: Limit, used: float, now: float) -> str | None:
        """The 80 % note, once per budget and period (remembered across restarts)."""
        start = period_start(limit.period, now).date().isoformat()
        name = f"budget-warned:{limit.scope}:{limit.target}:{limit.period}:{limit.unit}:{start}"
        if await self._store.get_meta(name) is not None:
            return None
        await self._store.set_meta(name, "1")
        share = int(100 * used / limit.amount) if limit.amount else 100
        return (
            f"{_whose(message, limit).capitalize()} {limit.period} budget is {share} % used "
            f"({amount_text(limit.unit, used)} of {amount_text(limit.unit, limit.amount)}); "
            f"it resets {_when(period_end(limit.period, now))}."
        )


@dataclass(slots=True)
class SharedHold:
    """One reply's hold on PostgreSQL: checked against what is spent and what the live instances hold,
    and taken, in one transaction under an advisory lock per target, so replies racing on different
    instances cannot both pass the edge of a budget."""

    targets: list[tuple[str, str]]
    usd: float
    tokens: int
    instance: str
    now: float
    reservation: str = field(default_factory=lambda: secrets.token_hex(8))

    def take(
        self, conn: Connection, limits: list[Limit], live: ColumnElement[bool]
    ) -> tuple[tuple[Limit, float] | None, tuple[Limit, float] | None]:
        """(the budget used up and its use, or None; the budget past the warning and its use, or None).
        Nothing is held when one is used up."""
        for scope, target in sorted(self.targets):  # one order everywhere: no two replies deadlock
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _hold_key(scope, target)})
        which = or_(*(_held_for(scope, target) for scope, target in self.targets))
        held = {
            (row.scope, row.target): (float(row.usd), float(row.tokens))
            for row in conn.execute(
                select(
                    budget_holds.c.scope,
                    budget_holds.c.target,
                    func.sum(budget_holds.c.usd).label("usd"),
                    func.sum(budget_holds.c.tokens).label("tokens"),
                )
                .where(which, live)
                .group_by(budget_holds.c.scope, budget_holds.c.target)
            )
        }
        spent: dict[tuple[str, str, str], tuple[float, int]] = {}
        warn = None
        for limit in limits:
            key = (limit.scope, limit.target, limit.period)
            if key not in spent:
                since = period_start(limit.period, self.now).timestamp()
                cost, count = conn.execute(spent_query(limit.scope, limit.target, since)).one()
                spent[key] = (float(cost), int(count))
            used = spent[key][UNITS.index(limit.unit)]
            others = held.get((limit.scope, limit.target), (0.0, 0.0))[UNITS.index(limit.unit)]
            if used + others >= limit.amount:
                return (limit, used), None
            if warn is None and used >= WARN_AT * limit.amount:
                warn = (limit, used)
        rows = [
            {
                "reservation": self.reservation,
                "scope": scope,
                "target": target,
                "usd": self.usd,
                "tokens": self.tokens,
                "instance": self.instance,
                "created_at": self.now,
            }
            for scope, target in self.targets
        ]
        conn.execute(insert(budget_holds), rows)
        return None, warn


def _held_for(scope: str, target: str) -> ColumnElement[bool]:
    return (budget_holds.c.scope == scope) & (budget_holds.c.target == target)


def forget_dead_holds(conn: Connection, dead: ColumnElement[bool]) -> int:
    """Delete the holds of instances that died (they count no more anyway); how many."""
    return conn.execute(delete(budget_holds).where(dead)).rowcount or 0


def _hold_key(scope: str, target: str) -> int:
    return advisory_key(f"budget:{scope}:{target}")


def refusal(message: Message, limit: Limit, used: float, resets: datetime) -> str:
    """Which budget, how much is used, when it resets and who can raise it: one sentence."""
    whose, amount = _whose(message, limit).capitalize(), amount_text(limit.unit, limit.amount)
    return (
        f"{whose} {limit.period} budget of {amount} "
        f"is used up ({amount_text(limit.unit, used)} so far), so Parley will not answer until it resets "
        f"{_when(resets)}; {_raiser(message, limit)} can raise it."
    )


def _whose(message: Message, limit: Limit) -> str:
    if limit.scope == "person":
        return "your"
    if limit.scope == "channel":
        return "this channel's"
    return f"this {server_word(message.key.platform)}'s"


def _raiser(message: Message, limit: Limit) -> str:
    if limit.scope == "channel":
        return "a channel manager (with /budget)"
    if limit.scope == "server":
        return "a Parley admin (with /budget)"
    return "a Parley admin (in parley.toml)"


def _when(moment: datetime) -> str:
    return f"at {moment:%H:%M} UTC on {moment.day} {moment:%b}"


BUDGET_USAGE = (
    "Usage: /budget shows the budgets here; "
    "/budget channel|server daily|monthly usd|tokens AMOUNT|off|default sets one."
)


async def budget_command(engine: Engine, message: Message, args: str) -> CommandResult:
    """`/budget` shows what applies here; managers set the channel's, Parley admins the server's."""
    words = args.lower().split()
    if not words:
        return CommandResult(await _show(engine, message))
    if len(words) != 4 or words[0] not in ("channel", "server") or words[1] not in PERIODS:
        return CommandResult(BUDGET_USAGE)
    scope, period, unit, value = words
    if unit not in UNITS:
        return CommandResult(f"A budget is in usd or tokens, not {unit!r}.")
    key = message.key
    if scope == "server":
        if not message.server_id:
            return CommandResult(
                f"There is no {server_word(key.platform)} here; set a channel budget instead."
            )
        if not engine.is_admin(message):
            return CommandResult(f"Only Parley admins can change this {server_word(key.platform)}'s budgets.")
        target = f"{key.platform}:{message.server_id}"
    else:
        if not engine.may_change_settings(message.author):
            return CommandResult("Only channel managers and Parley admins can change this channel's budgets.")
        target = f"{key.platform}:{key.channel_id}"
    whose = _whose(message, Limit(scope, target, period, unit, 0.0, True)).capitalize()
    if value == "default":
        await engine.store.clear_budget(scope, target, period, unit)
        return CommandResult(f"{whose} {period} {unit} budget is back to the default.", ephemeral=False)
    amount = None if value == "off" else _amount(value.removeprefix("$"), unit)
    if value != "off" and amount is None:
        return CommandResult(f"{value!r} is not an amount; write a number such as 5 or 0.50, or off.")
    await engine.store.set_budget(scope, target, period, unit, amount, message.author.id)
    shown = "off" if amount is None else amount_text(unit, amount)
    return CommandResult(f"{whose} {period} {unit} budget is now {shown}.", ephemeral=False)


def _amount(text: str, unit: str) -> float | None:
    try:
        amount = float(text) if unit == "usd" else float(int(text.replace(",", "").replace("_", "")))
    except ValueError:
        return None
    return amount if amount >= 0 and amount == amount and amount != float("inf") else None


async def _show(engine: Engine, message: Message) -> str:
    standings = await engine.budgets.standing(message)
    if not standings:
        return "No budgets apply here."
    lines = ["Budgets that apply here (UTC days and months):"]
    for standing in standings:
        limit = standing.limit
        source = "set with /budget" if limit.set_here else "default"
        lines.append(
            f"{_whose(message, limit).capitalize()} {limit.period}: "
            f"{amount_text(limit.unit, standing.used)} of {amount_text(limit.unit, limit.amount)} used, "
            f"resets {_when(standing.resets)} ({source})"
        )
    return "\n".join(lines)
