"""Who used how much: `/usage` in every chat, and `parley usage` for operators.

Periods are UTC: `today`, `week` (since Monday), `month` (since the 1st, the default) or `since DATE`.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.budgets import server_word
from bot.models import CommandResult, Message

if TYPE_CHECKING:
    from bot.engine import Engine
    from bot.store import Store

TOP_PEOPLE = 10
BY_COLUMNS = {"model": "name", "person": "person", "channel": "channel"}
USAGE = "Usage: /usage [me|channel|server] [today|week|month|since YYYY-MM-DD]."


class BadPeriod(ValueError):
    """A period nobody can read; the message is the sentence to show."""


def since(words: list[str], now: float) -> tuple[float, str]:
    """The moment a period starts and how to name it, from what was typed."""
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if not words or words == ["month"]:
        start = today.replace(day=1)
        return start.timestamp(), f"this month (since {start:%d %b} UTC)"
    if words == ["today"]:
        return today.timestamp(), "today (UTC)"
    if words == ["week"]:
        start = today - timedelta(days=today.weekday())
        return start.timestamp(), f"this week (since Monday {start:%d %b} UTC)"
    if len(words) == 2 and words[0] == "since":
        start = parse_date(words[1])
        return start.timestamp(), f"since {start:%d %b %Y} UTC"
    raise BadPeriod(USAGE)


def parse_date(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise BadPeriod(f"{text!r} is not a date; write it as YYYY-MM-DD, like 2026-05-01.") from None


async def usage_command(engine: Engine, message: Message, args: str) -> CommandResult:
    """`/usage [me|channel|server] [PERIOD]`: tokens and cost here, by model and (not for me) by person."""
    words = args.lower().split()
    scope = words.pop(0) if words and words[0] in ("me", "channel", "server") else "me"
    try:
        start, period = since(words, time.time())
    except BadPeriod as error:
        return CommandResult(str(error))
    key = message.key
    if scope == "me":
        where, title = {"person": f"{key.platform}:{message.author.id}"}, "Your usage"
    elif scope == "channel":
        where, title = {"channel": f"{key.platform}:{key.channel_id}"}, "Usage in this channel"
    else:
        word = server_word(key.platform)
        if not message.server_id:
            return CommandResult(f"There is no {word} here; try /usage channel.")
        if not engine.may_change_settings(message.author):
            return CommandResult(f"Only channel managers and Parley admins can see this {word}'s usage.")
        where, title = {"server": f"{key.platform}:{message.server_id}"}, f"Usage in this {word}"
    return CommandResult(await report(engine.store, where, start, f"{title} {period}", scope != "me"))


async def report(store: Store, where: dict[str, str], start: float, title: str, people: bool) -> str:
    total = await store.usage_report("model", "kind", start, where)
    if not total:
        return f"{title}: nothing yet."
    lines = [f"{title}: {_figures(total[0])}."]
    lines.append("By model:")
    lines += [
        f"  {row['key']}: {_figures(row)}" for row in await store.usage_report("model", "name", start, where)
    ]
    if people:
        ranked = await store.usage_report("model", "person", start, where)
        lines.append("Top people:" if len(ranked) <= TOP_PEOPLE else f"Top {TOP_PEOPLE} people:")
        lines += [f"  {row['person_name'] or row['key']}: {_figures(row)}" for row in ranked[:TOP_PEOPLE]]
    searches = await store.usage_report("search", "name", start, where)
    if searches:
        lines.append("Searches: " + ", ".join(f"{row['key']} {row['calls']}" for row in searches))
    return "\n".join(lines)


def _figures(row: dict[str, Any]) -> str:
    replies = int(row["replies"])
    tokens = int(row["prompt_tokens"]) + int(row["completion_tokens"])
    cost = "cost unknown" if row["cost"] is None else f"${row['cost']:,.4f}"
    return f"{replies} repl{'y' if replies == 1 else 'ies'}, {tokens:,} tokens, {cost}"


CSV_FIGURES = ("replies", "calls", "prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens")


async def operator_report(store: Store, start: float, by: str, as_csv: bool) -> str:
    """`parley usage`: every platform's usage since a moment, by model, person or channel."""
    rows = await store.usage_report("model", BY_COLUMNS[by], start)
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([by, "name", *CSV_FIGURES, "cost_usd"])
        for row in rows:
            name = row["person_name"] if by == "person" else ""
            cost = "" if row["cost"] is None else row["cost"]
            writer.writerow([row["key"], name, *(row[figure] for figure in CSV_FIGURES), cost])
        return out.getvalue()
    if not rows:
        return "No usage recorded in that period."
    width = max(len(_label(row, by)) for row in rows)
    lines = [f"{by:<{width}}  replies  prompt_tokens  completion_tokens  cost_usd"]
    for row in rows:
        cost = "unknown" if row["cost"] is None else f"{row['cost']:.4f}"
        lines.append(
            f"{_label(row, by):<{width}}  {row['replies']:>7}  {row['prompt_tokens']:>13}  "
            f"{row['completion_tokens']:>17}  {cost:>8}"
        )
    return "\n".join(lines)


def _label(row: dict[str, Any], by: str) -> str:
    return (
        f"{row['key']} ({row['person_name']})" if by == "person" and row["person_name"] else str(row["key"])
    )
