"""Once started, start-up's objects stay out of the garbage collector's way, and nothing else changes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bot.runtime import settle


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """Two objects that only reach each other: garbage only a collection frees."""
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test run gets its collector back as it was


def tracked(thing: object) -> bool:
    """Whether the collector's generations hold `thing` (frozen objects are in none of them)."""
    return any(each is thing for each in gc.get_objects())


def test_what_start_up_made_is_kept_out_of_later_collections() -> None:
    live = Node()
    assert tracked(live)
    settle()
    assert gc.get_freeze_count() > 0
    assert not tracked(live)
    assert not any(gc.get_objects(generation) for generation in (1, 2))  # nothing left to walk there


def test_start_ups_garbage_is_collected_first_not_kept() -> None:
    gone = cycle()
    assert gone() is not None
    settle()
    assert gone() is None


def test_garbage_made_afterwards_is_collected_as_before() -> None:
    settle()
    later = cycle()
    made = Node()
    assert tracked(made)  # a new object is the collector's again
    gc.collect()
    assert later() is None
