"""What every bench reports its latencies with."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The value `q` of the way up the sorted values (nearest rank); NaN when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
