"""Which store reads an engine makes: the names of the functions it runs with `store.read`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from bot.engine import Engine


def count_reads(engine: Engine) -> list[str]:
    """The name of every function the engine's store reads with, from now on."""
    names: list[str] = []
    read = engine.store.read

    async def counted(work: Callable[..., Any]) -> Any:
        names.append((work.func if isinstance(work, partial) else work).__name__)
        return await read(work)

    engine.store.read = counted  # type: ignore[method-assign]
    return names
