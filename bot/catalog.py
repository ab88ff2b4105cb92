"""Which models exist: provider listings, cached, behind `PROVIDER/MODEL_ID` names."""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.config import ProviderSettings, Settings
from bot.providers.anthropic import AnthropicProvider
from bot.providers.base import ModelInfo, Provider, ProviderError, Timeouts
from bot.providers.openai_compat import OpenAICompatibleProvider

log = logging.getLogger(__name__)

PRESET_HINTS = {
    "openrouter": "OPENROUTER_API_KEY",
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "ollama": "OLLAMA_BASE_URL (for example http://localhost:11434/v1)",
}


class UnknownModelError(Exception):
    """A model name nobody offers; the message is the sentence the user sees."""


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    name: str  # "provider/model_id"
    provider: Provider
    model_id: str
    info: ModelInfo | None


def build_provider(name: str, settings: ProviderSettings, timeouts: Timeouts) -> Provider:
    if settings.api == "anthropic":
        return AnthropicProvider(name, settings, timeouts)
    return OpenAICompatibleProvider(name, settings, timeouts)


class ModelCatalog:
    def __init__(
        self,
        providers: dict[str, Provider],
        cache_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.providers = providers
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._listings: dict[str, tuple[float, list[ModelInfo]]] = {}
        self._locks: dict[str, asyncio.Lock] = {name: asyncio.Lock() for name in providers}
        self._refreshing: asyncio.Task[tuple[list[str], dict[str, ProviderError]]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelCatalog:
        timeouts = Timeouts(
            connect=settings.connect_timeout,
            first_token=settings.first_token_timeout,
            chunk_gap=settings.chunk_timeout,
        )
        providers = {
            name: build_provider(name, provider_settings, timeouts)
            for name, provider_settings in settings.provider_settings().items()
        }
        return cls(providers, settings.models_cache_seconds)

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        await asyncio.gather(*(provider.aclose() for provider in self.providers.values()))

    async def listing(self, provider_name: str) -> list[ModelInfo]:
        """The provider's models, from cache while fresh. Raises ProviderError when it cannot be listed."""
        async with self._locks[provider_name]:
            cached = self._listings.get(provider_name)
            if cached and self._clock() - cached[0] < self._cache_seconds:
                return cached[1]
            models = await self.providers[provider_name].list_models()
            self._listings[provider_name] = (self._clock(), models)
            return models

    async def all_names(self) -> tuple[list[str], dict[str, ProviderError]]:
        """Every model as `provider/model_id`, and the providers that could not be listed."""
        names: list[str] = []
        failures: dict[str, ProviderError] = {}
        results = await asyncio.gather(
            *(self.listing(name) for name in self.providers), return_exceptions=True
        )
        for provider_name, result in zip(self.providers, results, strict=True):
            if isinstance(result, ProviderError):
                failures[provider_name] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                names.extend(f"{provider_name}/{model.id}" for model in result)
        return names, failures

    def refresh(self) -> asyncio.Task[tuple[list[str], dict[str, ProviderError]]]:
        """List every provider in the background (at start, so the first picker finds a warm cache)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self.all_names())
            self._refreshing.add_done_callback(_log_refresh_failure)
        return self._refreshing

    async def names_within(self, seconds: float) -> list[str]:
        """Every model name for a picker that must answer at once (Discord's autocomplete has 3 s).

        Waits at most `seconds` for the listings; past that, answers from the last ones listed, however
        old, while they go on loading for the next call."""
        try:
            names, _failures = await asyncio.wait_for(asyncio.shield(self.refresh()), seconds)
        except TimeoutError:
            return [f"{name}/{model.id}" for name, (_, models) in self._listings.items() for model in models]
        return names

    async def locate(self, name: str) -> tuple[str, str]:
        """The (provider, model id) a name means: `provider/model` as written, or a bare model id that
        exactly one provider offers. UnknownModelError, with the sentence to show, otherwise."""
        name = name.strip()
        provider_name, _, model_id = name.partition("/")
        if provider_name in self.providers and model_id:
            return provider_name, model_id
        provider_name, _, model_id = (await self._offered_by_one(name)).partition("/")
        return provider_name, model_id

    async def info(self, name: str) -> ModelInfo | None:
        """What the listing says of a model, or None when unknown or the listing is unavailable."""
        provider_name, model_id = await self.locate(name)
        return await self._listed(provider_name, model_id)

    async def resolve(self, name: str) -> ResolvedModel:
        provider_name, model_id = await self.locate(name)
        info = await self._listed(provider_name, model_id)
        return ResolvedModel(f"{provider_name}/{model_id}", self.providers[provider_name], model_id, info)

    async def canonical(self, name: str) -> tuple[str, str | None]:
        """The full name a user meant, and a note when it could not be checked; UnknownModelError otherwise.

        Accepts `provider/model`, or a bare model id that exactly one provider offers.
        """
        name = name.strip()
        provider_name, _, model_id = name.partition("/")
        if provider_name in self.providers and model_id:
            try:
                models = await self.listing(provider_name)
            except ProviderError as error:
                return name, f"(Could not check the model list: {error.user_message()})"
            if any(model.id == model_id for model in models):
                return name, None
            raise UnknownModelError(self._unknown(name, [f"{provider_name}/{m.id}" for m in models]))
        return await self._offered_by_one(name), None

    async def _listed(self, provider_name: str, model_id: str) -> ModelInfo | None:
        try:
            models = await self.listing(provider_name)
        except ProviderError:
            return None
        return next((model for model in models if model.id == model_id), None)

    async def _offered_by_one(self, name: str) -> str:
        """The full name of the one provider's model whose id is `name`."""
        names, failures = await self.all_names()
        matches = [full for full in names if full.partition("/")[2] == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UnknownModelError(
                f"{name} is offered by several providers: {', '.join(matches)}. Pick one."
            )
        provider_name, _, model_id = name.partition("/")
        if provider_name in PRESET_HINTS and model_id:
            raise UnknownModelError(_not_configured(provider_name))
        if failures:
            provider, error = next(iter(failures.items()))
            raise UnknownModelError(
                f"Could not look up {name}, as the {provider} model list is unavailable: "
                f"{error.user_message()}"
            )
        raise UnknownModelError(self._unknown(name, names))

    def _unknown(self, name: str, candidates: list[str]) -> str:
        by_id = {full.partition("/")[2]: full for full in candidates}
        provider_name, _, model_id = name.partition("/")
        bare = model_id if provider_name in self.providers else name
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
        close += [by_id[m] for m in difflib.get_close_matches(bare, list(by_id), n=3, cutoff=0.6)]
        close = list(dict.fromkeys(close))[:3]
        hint = f" Did you mean {', '.join(close)}?" if close else " See /models for what is available."
        return f"Unknown model {name}.{hint}"


def _log_refresh_failure(task: asyncio.Task[tuple[list[str], dict[str, ProviderError]]]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("listing the models failed", exc_info=error)


def _not_configured(provider_name: str) -> str:
    return f"The {provider_name} provider is not configured; set {PRESET_HINTS[provider_name]} to use it."
