"""A channel's history as the platform port gives it, for the tests of what Parley reads back."""

from __future__ import annotations

from bot.models import HistoryEntry


def said(
    count: int, *, start: float = 1_780_000_000.0, every: float = 60.0, parley: set[int] | None = None
) -> list[HistoryEntry]:
    """`count` messages a minute apart; those numbered in `parley` are Parley's own."""
    return [
        HistoryEntry(
            id=f"h{n}",
            author_id="parley" if n in (parley or set()) else f"u{n % 3}",
            author_name="Parley" if n in (parley or set()) else ("Ada", "Bob", "Cy")[n % 3],
            text=f"message number {n} about the release",
            created_at=start + n * every,
            by_parley=n in (parley or set()),
            permalink=f"https://chat.example/general/h{n}",
        )
        for n in range(count)
    ]
