"""Schedule times as people type them, on fixed clocks: phrases, cron, time zones and a DST change."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.when import BadWhen, When, parse_when

BERLIN = ZoneInfo("Europe/Berlin")
FRIDAY = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)  # 11:00 in Berlin


def fires(when: When, now: datetime, count: int) -> list[datetime]:
    """The next `count` fire times after `now`, as a schedule made at `now` would run."""
    found, after = [], now
    for _ in range(count):
        fire = when.next_fire(now, after)
        assert fire is not None
        found.append(fire)
        after = fire
    return found


def test_every_weekday_at_nine_skips_the_weekend_in_the_conversations_zone() -> None:
    when, prompt = parse_when("every weekday at 9:00 summarize yesterday", "Europe/Berlin", FRIDAY)
    assert (when.kind, when.spec, prompt) == ("cron", "0 9 * * mon-fri", "summarize yesterday")
    assert [f.astimezone(BERLIN).strftime("%a %H:%M") for f in fires(when, FRIDAY, 3)] == [
        "Mon 09:00", "Tue 09:00", "Wed 09:00",
    ]  # fmt: skip
    assert fires(when, FRIDAY, 1)[0] == datetime(2026, 12, 7, 8, 0, tzinfo=UTC)  # CET is UTC+1


def test_every_monday_at_half_past_eight_and_every_day_at_six_pm() -> None:
    monday, _ = parse_when("every monday at 8:30 plan the week", "UTC", FRIDAY)
    assert fires(monday, FRIDAY, 2) == [
        datetime(2026, 12, 7, 8, 30, tzinfo=UTC), datetime(2026, 12, 14, 8, 30, tzinfo=UTC),
    ]  # fmt: skip
    evening, _ = parse_when("every day at 6pm wrap up", "UTC", FRIDAY)
    assert fires(evening, FRIDAY, 1) == [datetime(2026, 12, 4, 18, 0, tzinfo=UTC)]


def test_a_daily_time_stays_on_the_wall_clock_across_the_spring_dst_change() -> None:
    saturday = datetime(2027, 3, 27, 12, 0, tzinfo=UTC)  # Berlin moves to CEST on Sunday 28 March
    when, _ = parse_when("every day at 18:00 wrap up", "Europe/Berlin", saturday)
    before, after = fires(when, saturday, 2)
    assert before == datetime(2027, 3, 27, 17, 0, tzinfo=UTC)  # 18:00 CET
    assert after == datetime(2027, 3, 28, 16, 0, tzinfo=UTC)  # 18:00 CEST, 23 hours later
    assert after.astimezone(BERLIN).hour == 18


def test_an_interval_counts_elapsed_time_across_the_autumn_dst_change() -> None:
    made = datetime(2027, 10, 30, 23, 30, tzinfo=UTC)  # Berlin falls back at 01:00 UTC on 31 October
    when, prompt = parse_when("every 2 hours check the build", "Europe/Berlin", made)
    assert (when.kind, when.spec, prompt) == ("interval", "7200", "check the build")
    times = fires(when, made, 3)
    assert [b - a for a, b in itertools.pairwise([made, *times])] == [timedelta(hours=2)] * 3
    assert parse_when("every 30 minutes x", "UTC", made)[0].spec == "1800"
    assert parse_when("every 10 seconds x", "UTC", made)[0].shortest_gap(made) == 10


def test_one_off_times_in_tomorrow_and_on_a_date() -> None:
    soon, prompt = parse_when("in 30 minutes remind us to vote", "UTC", FRIDAY)
    assert fires(soon, FRIDAY, 1) == [FRIDAY + timedelta(minutes=30)] and prompt == "remind us to vote"
    assert soon.next_fire(FRIDAY, FRIDAY + timedelta(minutes=30)) is None  # once only
    tomorrow, _ = parse_when("tomorrow at 10:00 standup", "America/New_York", FRIDAY)
    assert fires(tomorrow, FRIDAY, 1) == [datetime(2026, 12, 5, 15, 0, tzinfo=UTC)]  # EST is UTC-5
    dated, _ = parse_when("on 2027-01-15 at 14:00 review", "Europe/Berlin", FRIDAY)
    assert fires(dated, FRIDAY, 1) == [datetime(2027, 1, 15, 13, 0, tzinfo=UTC)]
    assert dated.shortest_gap(FRIDAY) is None


def test_cron_days_are_crontabs_sunday_is_0_and_7() -> None:
    saturday = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    weekdays, prompt = parse_when("0 9 * * 1-5 standup notes", "UTC", saturday)
    assert prompt == "standup notes"
    assert [f.strftime("%a") for f in fires(weekdays, saturday, 5)] == ["Mon", "Tue", "Wed", "Thu", "Fri"]
    for sunday in ("0", "7", "sun"):
        when, _ = parse_when(f"30 8 * * {sunday} x", "UTC", saturday)
        assert fires(when, saturday, 1)[0] == datetime(2026, 12, 6, 8, 30, tzinfo=UTC)
    every_day, _ = parse_when("0 7 * * 0-6 x", "UTC", saturday)
    assert len({f.strftime("%a") for f in fires(every_day, saturday, 7)}) == 7
    five, _ = parse_when("*/5 * * * * ping", "UTC", saturday)
    assert five.shortest_gap(saturday) == 300


@pytest.mark.parametrize(
    ("typed", "zone", "expected"),
    [
        ("0 9 *", "UTC", "is not a 5-field cron expression; for example `0 9 * * 1-5`"),
        ("0 9 * * summarize", "UTC", "is not a valid cron expression (Invalid weekday name"),
        ("61 9 * * * x", "UTC", "is not a valid cron expression"),
        ("every weekday at 9:00 x", "Mars/Base", "'Mars/Base' is not a time zone Parley knows"),
        ("on 2020-01-15 at 14:00 x", "UTC", "2020-01-15 14:00 (UTC) has already passed"),
        ("today at 9:00 x", "UTC", "has already passed; pick a later time, such as `tomorrow at 10:00`"),
        ("every day at 25:00 x", "UTC", "is not a time of day; write it as `9:00`"),
        ("on 2027-02-30 at 10:00 x", "UTC", "2027-02-30 is not a date; write it as `on 2027-01-15 at 14:00`"),
        (
            "whenever you like x",
            "UTC",
            "try `/schedule add every weekday at 9:00 /summarize since yesterday`",
        ),
    ],
)
def test_a_time_it_cannot_use_gets_one_sentence_with_an_example(typed: str, zone: str, expected: str) -> None:
    with pytest.raises(BadWhen) as refused:
        parse_when(typed, zone, FRIDAY)
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    assert "`" in str(refused.value)  # every answer shows something valid to type
