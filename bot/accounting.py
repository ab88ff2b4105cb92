"""What a reply used and cost, and what it teaches the token estimate."""

from __future__ import annotations

from dataclasses import replace

from bot.catalog import ResolvedModel
from bot.providers.base import Usage
from bot.tokens import TokenCalibration


def add_usage(before: Usage | None, more: Usage) -> Usage:
    """Usage over every provider call of one reply."""
    if before is None:
        return more
    cost = None if before.cost is None and more.cost is None else (before.cost or 0.0) + (more.cost or 0.0)
    return Usage(
        before.prompt_tokens + more.prompt_tokens, before.completion_tokens + more.completion_tokens, cost
    )


def settle(
    usage: Usage | None,
    answered_by: str,
    resolved: ResolvedModel,
    prompt_estimate: int,
    rounds: int,
    calibration: TokenCalibration,
) -> Usage | None:
    """The reply's usage with its cost when the provider gave none but the listing has prices.

    Only a one-call reply by the model asked for is a clean comparison: it corrects the token estimate
    and is priced from that model's listing.
    """
    if usage is None or answered_by != resolved.name or rounds != 1:
        return usage
    calibration.observe(resolved.name, prompt_estimate, usage.prompt_tokens)
    info = resolved.info
    if usage.cost is None and info and info.prompt_price is not None:
        cost = usage.prompt_tokens * info.prompt_price
        cost += usage.completion_tokens * (info.completion_price or 0.0)
        usage = replace(usage, cost=cost)
    return usage
