"""A schedule stored without going through a platform, for the tests and benches of several instances."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.schedule_store import ScheduleStore
from bot.store import Store
from bot.when import parse_when


async def every_second(store: Store, conversation: str, prompt: str, by: str, by_name: str) -> int:
    """A schedule stored as `/schedule add every second PROMPT` would, first firing a second from now."""
    now = datetime.now(UTC)
    when, prompt = parse_when(f"every second {prompt}", "UTC", now)
    return await ScheduleStore(store).add(
        conversation=conversation,
        origin=conversation,
        prompt=prompt,
        when=when,
        anchor=now.timestamp(),
        next_run_at=now.timestamp() + 1,
        created_by=by,
        created_by_name=by_name,
    )
