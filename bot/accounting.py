"""What a reply used and cost, and what it teaches the token estimate."""

from __future__ import annotations

from dataclasses import replace

from bot.catalog import ModelCatalog, ResolvedModel, UnknownModelError
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


async def priced(catalog: ModelCatalog, usage: Usage, model: str, resolved: ResolvedModel) -> Usage:
    """One call's usage with its cost: as the provider reported it, else from the answering model's
    listed prices (a fallback's own, not the model asked for)."""
    if usage.cost is not None:
        return usage
    try:  # a fallback's listing is cached: choosing the fallbacks resolved it
        info = resolved.info if model == resolved.name else await catalog.info(model)
    except UnknownModelError:
        return usage
    if info is None or info.prompt_price is None:
        return usage
    cost = usage.prompt_tokens * info.prompt_price + usage.completion_tokens * (info.completion_price or 0.0)
    return replace(usage, cost=cost)


def calibrate(
    calibration: TokenCalibration,
    usage: Usage | None,
    answered_by: str,
    resolved: ResolvedModel,
    prompt_estimate: int,
    rounds: int,
) -> None:
    """Correct the token estimate from a clean comparison: one call, by the model asked for."""
    if usage is not None and answered_by == resolved.name and rounds == 1:
        calibration.observe(resolved.name, prompt_estimate, usage.prompt_tokens)
