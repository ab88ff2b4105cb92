"""What a reply used and cost, and what it teaches the token estimate."""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from bot.catalog import ModelCatalog, ResolvedModel, UnknownModelError
from bot.config import Settings
from bot.models import Message
from bot.providers.base import ModelInfo, Usage
from bot.tokens import TokenCalibration

PER_MILLION = 1e-6


def add_usage(before: Usage | None, more: Usage) -> Usage:
    """Usage over every provider call of one reply."""
    if before is None:
        return more
    cost = None if before.cost is None and more.cost is None else (before.cost or 0.0) + (more.cost or 0.0)
    return Usage(
        before.prompt_tokens + more.prompt_tokens,
        before.completion_tokens + more.completion_tokens,
        cost,
        before.reasoning_tokens + more.reasoning_tokens,
        before.cached_tokens + more.cached_tokens,
    )


@dataclass(slots=True)
class Ledger:
    """Everything one reply spent: each model's calls (failed attempts that consumed tokens included),
    and the searches it made, by backend."""

    models: dict[str, Usage] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    searches: Counter[str] = field(default_factory=Counter)

    def add(self, model: str, usage: Usage) -> None:
        self.models[model] = add_usage(self.models.get(model), usage)
        self.calls[model] += 1

    @property
    def total(self) -> Usage | None:
        """The reply's usage over every model that spent on it; None when none reported any."""
        return functools.reduce(add_usage, self.models.values(), None)

    def rows(self, message: Message, inbox_id: int, now: float) -> list[dict[str, Any]]:
        """The usage table's rows for this reply: who asked, where, what for."""
        key = message.key
        common = {
            "inbox_id": inbox_id,
            "platform": key.platform,
            "server": f"{key.platform}:{message.server_id}" if message.server_id else None,
            "channel": f"{key.platform}:{key.channel_id}",
            "conversation": str(key),
            "person": f"{key.platform}:{message.author.id}",
            "person_name": message.author.display_name,
            "created_at": now,
        }
        rows = [
            {
                **common,
                "kind": "model",
                "name": model,
                "calls": self.calls[model],
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
                "cached_tokens": usage.cached_tokens,
                "cost": usage.cost,
            }
            for model, usage in self.models.items()
        ]
        rows += [
            {**common, "kind": "search", "name": backend, "calls": count, "cost": None}
            | dict.fromkeys(("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens"), 0)
            for backend, count in self.searches.items()
        ]
        return rows


async def priced(
    catalog: ModelCatalog, settings: Settings, usage: Usage, model: str, resolved: ResolvedModel
) -> Usage:
    """One call's usage with its cost: as the provider reported it, else from the answering model's
    listed prices (a fallback's own, not the model asked for), else from `[providers.NAME.prices]`."""
    if usage.cost is not None:
        return usage
    prices = await prices_of(catalog, settings, model, resolved)
    if prices is None:
        return usage
    prompt, completion = prices
    return replace(usage, cost=usage.prompt_tokens * prompt + usage.completion_tokens * completion)


async def prices_of(
    catalog: ModelCatalog, settings: Settings, model: str, resolved: ResolvedModel | None = None
) -> tuple[float, float] | None:
    """USD per prompt and per completion token of a model, from its listing or parley.toml."""
    info: ModelInfo | None
    try:  # a fallback's listing is cached: choosing the fallbacks resolved it
        info = resolved.info if resolved is not None and model == resolved.name else await catalog.info(model)
    except UnknownModelError:
        info = None
    if info is not None and info.prompt_price is not None:
        return info.prompt_price, info.completion_price or 0.0
    provider, _, model_id = model.partition("/")
    configured = settings.provider_settings().get(provider)
    price = configured.prices.get(model_id) if configured else None
    if price is None:
        return None
    return price.prompt * PER_MILLION, price.completion * PER_MILLION


async def estimate(
    catalog: ModelCatalog, settings: Settings, resolved: ResolvedModel, prompt_tokens: int, reply_room: int
) -> tuple[float, int]:
    """What a reply may spend, in USD (0 when nothing prices the model) and tokens: its prompt and the
    room kept for its answer. Budgets hold this until the real usage is recorded."""
    prices = await prices_of(catalog, settings, resolved.name, resolved)
    usd = prompt_tokens * prices[0] + reply_room * prices[1] if prices else 0.0
    return usd, prompt_tokens + reply_room


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
