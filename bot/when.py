"""When things happen: a schedule's WHEN (a cron expression or a phrase) as an APScheduler trigger, and
where a `/summarize since …` range starts, both in a conversation's time zone.

APScheduler gives the fire times (time-zone and DST-correct); everything here is only the words people
type and the one sentence, with an example, that answers a mistake.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")  # crontab numbers: 0 and 7 are Sunday
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
GAPS_CHECKED = 200  # cron fire times looked at to find its shortest gap
EXAMPLES = (
    "`/schedule add every weekday at 9:00 /summarize since yesterday`, `/schedule add every 2 hours "
    "check the build`, `/schedule add in 30 minutes remind us to vote` or `/schedule add 0 9 * * 1-5 PROMPT`"
)


class BadWhen(ValueError):
    """A time people typed that cannot be used; the message is one sentence with a valid example."""


@dataclass(frozen=True, slots=True)
class When:
    """How a schedule repeats: `kind` cron (spec: the 5 fields), interval (spec: seconds) or date (spec:
    the ISO time), in `timezone`; `text` is what was typed."""

    kind: str
    spec: str
    timezone: str
    text: str

    def trigger(self, anchor: datetime) -> BaseTrigger:
        """The APScheduler trigger; an interval counts from `anchor` (when the schedule was made)."""
        tz = zone(self.timezone)
        if self.kind == "cron":
            return _cron(self.spec, tz)
        if self.kind == "interval":
            seconds = float(self.spec)
            first = anchor + timedelta(seconds=seconds)
            return IntervalTrigger(seconds=seconds, start_date=first, timezone=tz)
        return DateTrigger(datetime.fromisoformat(self.spec), timezone=tz)

    def next_fire(self, anchor: datetime, after: datetime) -> datetime | None:
        """The first fire time later than `after`; None when it never fires again."""
        trigger = self.trigger(anchor)
        fire = trigger.get_next_fire_time(None, after)
        while fire is not None and fire <= after:
            fire = trigger.get_next_fire_time(fire, after)
        return fire

    def shortest_gap(self, anchor: datetime) -> float | None:
        """The least time between two runs, in seconds (None for a single run)."""
        if self.kind == "interval":
            return float(self.spec)
        if self.kind == "date":
            return None
        trigger = self.trigger(anchor)
        fires: list[datetime] = []
        fire = trigger.get_next_fire_time(None, anchor)
        while fire is not None and len(fires) < GAPS_CHECKED:
            fires.append(fire)
            fire = trigger.get_next_fire_time(fire, fire)
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fires)]
        return min(gaps) if gaps else None


def zone(name: str) -> ZoneInfo:
    """A time zone by its IANA name; BadWhen with an example otherwise."""
    cleaned = name.strip()
    try:
        if cleaned and ".." not in cleaned and not cleaned.startswith("/"):
            return ZoneInfo(cleaned)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    raise BadWhen(
        f"{name.strip()!r} is not a time zone Parley knows; use an IANA name such as Europe/Berlin, "
        "America/New_York or UTC, for example `/schedule tz Europe/Berlin`."
    )


_TIME = r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>am|pm)?"
_EVERY_DAY = re.compile(rf"every\s+(?P<days>day|weekday|{'|'.join(DAYS)})s?\s+at\s+{_TIME}", re.I)
_EVERY = re.compile(r"every\s+(?:(?P<count>\d+)\s+)?(?P<unit>second|minute|hour|day)s?", re.I)
_IN = re.compile(r"in\s+(?P<count>\d+)\s+(?P<unit>second|minute|hour|day)s?", re.I)
_TOMORROW = re.compile(rf"(?P<day>today|tomorrow)\s+at\s+{_TIME}", re.I)
_ON = re.compile(rf"on\s+(?P<date>\d{{4}}-\d{{2}}-\d{{2}})\s+at\s+{_TIME}", re.I)
_CRON_FIELD = re.compile(r"[\d*/,\-]+")
_CRON_NAMED_FIELD = re.compile(r"[\d*/,\-a-zA-Z]+")


def parse_when(text: str, timezone: str, now: datetime) -> tuple[When, str]:
    """The WHEN at the start of `text`, and the rest (the prompt). `now` is aware, for one-off times."""
    stripped = text.strip()
    tz = zone(timezone)
    local_now = now.astimezone(tz)
    tokens = stripped.split()
    if tokens and _CRON_FIELD.fullmatch(tokens[0]):
        return _parse_cron(tokens, timezone)
    if found := _EVERY_DAY.match(stripped):
        hour, minute = _clock(found)
        days = found["days"].lower()
        dow = {"day": "*", "weekday": "mon-fri"}.get(days, days[:3])
        return When("cron", f"{minute} {hour} * * {dow}", timezone, found[0].strip()), _rest(stripped, found)
    if found := _EVERY.match(stripped):
        seconds = int(found["count"] or 1) * UNITS[found["unit"].lower()]
        if seconds <= 0:
            raise BadWhen(f"{found[0]!r} never comes round; try `every 30 minutes`.")
        return When("interval", str(seconds), timezone, found[0].strip()), _rest(stripped, found)
    if found := _IN.match(stripped):
        at = local_now + timedelta(seconds=int(found["count"]) * UNITS[found["unit"].lower()])
        return _once(at, timezone, found[0].strip(), local_now), _rest(stripped, found)
    if found := _TOMORROW.match(stripped):
        hour, minute = _clock(found)
        day = local_now.date() + timedelta(days=1 if found["day"].lower() == "tomorrow" else 0)
        at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
        return _once(at, timezone, found[0].strip(), local_now), _rest(stripped, found)
    if found := _ON.match(stripped):
        hour, minute = _clock(found)
        try:
            day = datetime.strptime(found["date"], "%Y-%m-%d")
        except ValueError:
            raise BadWhen(f"{found['date']} is not a date; write it as `on 2027-01-15 at 14:00`.") from None
        at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
        return _once(at, timezone, found[0].strip(), local_now), _rest(stripped, found)
    raise BadWhen(f"Parley cannot tell when {stripped[:60]!r} should run; try {EXAMPLES}.")


def _parse_cron(tokens: list[str], timezone: str) -> tuple[When, str]:
    fields = tokens[:5]
    well_formed = len(fields) == 5 and all(
        (_CRON_NAMED_FIELD if index >= 3 else _CRON_FIELD).fullmatch(value)
        for index, value in enumerate(fields)
    )
    example = "`0 9 * * 1-5` (9:00 on weekdays: minute, hour, day of month, month, day of week)"
    if not well_formed:
        raise BadWhen(f"{' '.join(fields)!r} is not a 5-field cron expression; for example {example}.")
    spec = " ".join(fields)
    try:
        _cron(spec, zone(timezone))
    except ValueError as error:
        raise BadWhen(f"{spec!r} is not a valid cron expression ({error}); for example {example}.") from None
    return When("cron", spec, timezone, spec), " ".join(tokens[5:])


def _cron(spec: str, tz: ZoneInfo) -> CronTrigger:
    minute, hour, day, month, dow = spec.split()
    return CronTrigger(
        minute=minute, hour=hour, day=day, month=month, day_of_week=_crontab_days(dow), timezone=tz
    )


def _crontab_days(field: str) -> str:
    """Crontab's day numbers (0 and 7 Sunday, 1 Monday) as names: APScheduler 3 counts 0 as Monday."""
    parts = []
    for part in field.lower().split(","):
        base, slash, step = part.partition("/")
        low, dash, high = base.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            parts.append(part)  # `*`, `*/2`, names: the same in both
            continue
        if int(low) > 7 or (dash and int(high) > 7):
            raise ValueError(f"day of week {base} is not between 0 and 7")
        if dash and int(low) == 0 and int(high) >= 1:  # 0-5: Sunday, then Monday to Friday
            parts.append("sun")
            low = "1"
        named = CRON_DAYS[int(low)] + (f"-{CRON_DAYS[int(high)]}" if dash else "")
        parts.append(named + (f"/{step}" if slash else ""))
    return ",".join(parts)


def _clock(found: re.Match[str]) -> tuple[int, int]:
    hour, minute = int(found["hour"]), int(found["minute"] or 0)
    ampm = (found["ampm"] or "").lower()
    if ampm and not 1 <= hour <= 12:
        raise BadWhen(f"{found[0]!r} is not a time of day; write it as `9:00`, `18:30` or `6pm`.")
    if ampm:
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59:
        raise BadWhen(f"{found[0]!r} is not a time of day; write it as `9:00`, `18:30` or `6pm`.")
    return hour, minute


def _once(at: datetime, timezone: str, text: str, now: datetime) -> When:
    if at <= now:
        shown = at.strftime("%Y-%m-%d %H:%M")
        raise BadWhen(
            f"{shown} ({timezone}) has already passed; pick a later time, such as `tomorrow at 10:00` "
            "or `in 30 minutes`."
        )
    return When("date", at.isoformat(), timezone, text)


def _rest(text: str, found: re.Match[str]) -> str:
    return text[found.end() :].strip()


_SINCE_SPAN = re.compile(r"(?P<count>\d+)\s*(?P<unit>m|min|minutes?|h|hours?|d|days?|w|weeks?)", re.I)
SPAN_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SINCE_EXAMPLE = "`/summarize since yesterday` (or `since 2h`, `since 1d`, `since monday`)"


def since(text: str, timezone: str, now: datetime) -> datetime:
    """Where `since 2h`, `since 1d`, `since yesterday`, `since today` or `since monday` begins."""
    word = text.strip().lower()
    local = now.astimezone(zone(timezone))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if found := _SINCE_SPAN.fullmatch(word):
        return now - timedelta(seconds=int(found["count"]) * SPAN_SECONDS[found["unit"][0].lower()])
    if word == "today":
        return _midnight(midnight)
    if word == "yesterday":
        return _midnight(midnight - timedelta(days=1))
    if word.rstrip("s") in DAYS:
        back = (local.weekday() - DAYS.index(word.rstrip("s"))) % 7
        return _midnight(midnight - timedelta(days=back))
    raise BadWhen(f"Parley cannot tell when {text.strip()!r} was; try {SINCE_EXAMPLE}.")


def _midnight(day: datetime) -> datetime:
    """The start of that local day (its wall clock re-read, so a DST change in between is right)."""
    assert day.tzinfo is not None
    return datetime(day.year, day.month, day.day, tzinfo=day.tzinfo)
