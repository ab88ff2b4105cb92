"""`/schedule add|list|pause|resume|delete|run|tz`: prompts that run on their own, here or in another
channel, and the conversation's time zone. Every mistake is answered with one sentence and an example."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.models import CommandResult, ConversationKey, Message
from bot.schedule_store import Schedule, ScheduleStore
from bot.scheduler import shown
from bot.summarize import ZONE_META, conversation_zone
from bot.when import BadWhen, parse_when, zone

if TYPE_CHECKING:
    from bot.engine import Engine

ACTIONS = ("add", "list", "pause", "resume", "delete", "run", "tz")
PROMPT_SHOWN = 80  # characters of a prompt in /schedule list
USAGE = (
    "Use `/schedule add WHEN PROMPT` (for example `/schedule add every weekday at 9:00 /summarize since "
    "yesterday`), `/schedule list`, `/schedule pause|resume|delete|run ID` or `/schedule tz ZONE`."
)
_TARGET = re.compile(r"--to\s+(?P<target>\S+)\s*")


async def schedule(engine: Engine, message: Message, args: str) -> CommandResult:
    action, _, rest = args.strip().partition(" ")
    action, rest = action.lower(), rest.strip()
    if action not in ACTIONS:
        return CommandResult(f"/schedule has no {action!r}. {USAGE}" if action else USAGE)
    if action == "list":
        return await _list(engine, message)
    if action == "tz" and not rest:
        timezone = await conversation_zone(engine, message.key, message.author.timezone)
        return CommandResult(f"Times here are in {timezone}; `/schedule tz Europe/Berlin` changes that.")
    if not engine.may_change_settings(message.author):
        return CommandResult("Only channel managers and Parley admins can change schedules.")
    if action == "add":
        return await _add(engine, message, rest)
    if action == "tz":
        return await _set_zone(engine, message, rest)
    found = await _own(engine, message, rest, action)
    if isinstance(found, CommandResult):
        return found
    return await _change(engine, message, found, action)


def _store(engine: Engine) -> ScheduleStore:
    return engine.scheduler.store if engine.scheduler else ScheduleStore(engine.store)


async def _add(engine: Engine, message: Message, text: str) -> CommandResult:
    settings = engine.settings
    store = _store(engine)
    if await store.count(str(message.key)) >= settings.schedule_max_per_conversation:
        return CommandResult(
            f"This conversation already has {settings.schedule_max_per_conversation} schedules, the most it "
            "may hold; remove one with `/schedule delete ID` (`/schedule list` shows them)."
        )
    timezone = await conversation_zone(engine, message.key, message.author.timezone)
    now = datetime.now(UTC)
    try:
        when, rest = parse_when(text, timezone, now)
    except BadWhen as error:
        return CommandResult(str(error))
    target, target_text = message.key, None
    if found := _TARGET.match(rest):
        resolved = await _target(engine, message.key, found["target"])
        if isinstance(resolved, CommandResult):
            return resolved
        target, target_text, rest = resolved, found["target"], rest[found.end() :]
    prompt = rest.strip()
    if not prompt:
        return CommandResult(
            f"Say what to do at {when.text!r}: for example "
            f"`/schedule add {when.text} /summarize since yesterday`."
        )
    gap = when.shortest_gap(now)
    if gap is not None and gap < settings.schedule_min_interval:
        least = _duration(settings.schedule_min_interval)
        return CommandResult(
            f"{when.text!r} would run every {_duration(gap)}; schedules here run at most every {least}, "
            f"for example `/schedule add every {least} {prompt[:40]}`."
        )
    fire = when.next_fire(now, now)
    if fire is None:
        return CommandResult(f"{when.text!r} never comes round again; try `tomorrow at 10:00`.")
    schedule_id = await store.add(
        conversation=str(target),
        origin=str(message.key),
        prompt=prompt,
        when=when,
        anchor=now.timestamp(),
        next_run_at=fire.timestamp(),
        created_by=message.author.id,
        created_by_name=message.author.display_name,
        target_text=target_text,
    )
    if engine.scheduler is not None:
        await engine.scheduler.sync()
    where = f" in {target_text}" if target_text else ""
    return CommandResult(
        f"Schedule {schedule_id} added: {when.text} ({timezone}){where}. "
        f"Next run: {shown(fire.timestamp(), timezone)}.",
        ephemeral=False,
    )


async def _target(engine: Engine, here: ConversationKey, typed: str) -> ConversationKey | CommandResult:
    """The channel `--to` names, when Parley may post there."""
    platform = engine.platforms.get(here.platform)
    example = "for example `/schedule add every weekday at 9:00 --to #eng-digest /summarize since yesterday`"
    target = await platform.resolve_channel(here, typed) if platform is not None else None
    if platform is None or target is None:
        return CommandResult(f"Parley cannot find the channel {typed}; name one it is in, {example}.")
    if not await platform.may_post(target):
        return CommandResult(
            f"Parley may not post in {typed}; invite it there (or allow it to send messages), {example}."
        )
    return target


async def _own(engine: Engine, message: Message, text: str, action: str) -> Schedule | CommandResult:
    """The schedule `ID` names, made in this conversation."""
    example = f"`/schedule {action} 3` (`/schedule list` shows the ids here)"
    if not text.isdigit():
        return CommandResult(f"/schedule {action} needs a schedule's id, for example {example}.")
    found = await _store(engine).get(int(text))
    if found is None or found.origin != str(message.key):
        return CommandResult(f"There is no schedule {text} here; try {example}.")
    return found


async def _change(engine: Engine, message: Message, found: Schedule, action: str) -> CommandResult:
    store = _store(engine)
    scheduler = engine.scheduler
    if action == "run":
        if scheduler is None:
            return CommandResult("Schedules run only under `parley run`; start it there to run one now.")
        scheduler.run_now(found)
        return CommandResult(f"Schedule {found.id} is running now.", ephemeral=False)
    if action == "delete":
        await store.delete(found.id)
        text = f"Schedule {found.id} deleted."
    elif action == "pause":
        await store.set_state(found.id, "paused", None)
        text = f"Schedule {found.id} paused; `/schedule resume {found.id}` starts it again."
    else:
        now = datetime.now(UTC)
        fire = found.when.next_fire(datetime.fromtimestamp(found.anchor, UTC), now)
        if fire is None:
            return CommandResult(
                f"Schedule {found.id} ({found.when.text}) has no run left to resume; add a new one, "
                "for example `/schedule add tomorrow at 10:00 PROMPT`."
            )
        await store.set_state(found.id, "active", fire.timestamp())
        timezone = await conversation_zone(engine, message.key, message.author.timezone)
        text = f"Schedule {found.id} resumed. Next run: {shown(fire.timestamp(), timezone)}."
    if scheduler is not None:
        await scheduler.sync()
    return CommandResult(text, ephemeral=False)


async def _list(engine: Engine, message: Message) -> CommandResult:
    found = await _store(engine).listed(str(message.key))
    if not found:
        return CommandResult("No schedules here. Add one with `/schedule add every weekday at 9:00 PROMPT`.")
    timezone = await conversation_zone(engine, message.key, message.author.timezone)
    lines = [f"Schedules here (times in {timezone}):"]
    for item in found:
        upcoming = shown(item.next_run_at, timezone) if item.next_run_at else "none"
        where = f"in {item.target_text}" if item.target_text else "here"
        prompt = item.prompt if len(item.prompt) <= PROMPT_SHOWN else item.prompt[:PROMPT_SHOWN] + "…"
        last = item.last_outcome or "not run yet"
        lines.append(
            f"{item.id}: {item.when.text}, next {upcoming}, {where}, {item.state}, last {last} — {prompt}"
        )
    return CommandResult("\n".join(lines))


async def _set_zone(engine: Engine, message: Message, name: str) -> CommandResult:
    try:
        zone(name)
    except BadWhen as error:
        return CommandResult(str(error))
    await engine.store.set_meta(f"{ZONE_META}{message.key}", name.strip())
    where = "this thread" if message.key.thread_id else "this channel"
    return CommandResult(
        f"Times in {where} are now in {name.strip()}; schedules added from now on use it.", ephemeral=False
    )


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    count = int(seconds) if seconds == int(seconds) else seconds
    return f"{count:g} second{'s' if count != 1 else ''}"
