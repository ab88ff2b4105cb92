"""Retries and fallbacks, only while nothing of the reply has reached the user."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from bot.providers.base import ChatRequest, Provider, ProviderError, StreamEvent, TextDelta, ToolCall

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.5


@dataclass(frozen=True, slots=True)
class Attempt:
    label: str  # the model's full name, for logs and for recording who answered
    provider: Provider
    request: ChatRequest


class ResilientStream:
    """Streams from the first attempt that works: a model, retried on passing failures, then its fallbacks.

    Once text or a tool call has been yielded, a failure is final: retrying would repeat what the
    user already saw. If every attempt fails, the first model's error is raised, since that model is
    the one the channel asked for.
    """

    def __init__(
        self,
        attempts: Sequence[Attempt],
        *,
        max_retries: int,
        retry_after_cap: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._attempts = attempts
        self._max_retries = max_retries
        self._retry_after_cap = retry_after_cap
        self._sleep = sleep
        self._rng = rng
        self.answered_by: str | None = None
        self.attempting: str | None = None  # the model the events now come from, failed attempts included

    async def events(self) -> AsyncIterator[StreamEvent]:
        first_error: ProviderError | None = None
        for attempt in self._attempts:
            self.attempting = attempt.label
            for retry in range(self._max_retries + 1):
                visible = False
                try:
                    async for event in attempt.provider.stream(attempt.request):
                        if isinstance(event, TextDelta | ToolCall):
                            visible = True
                            self.answered_by = attempt.label
                        yield event
                    self.answered_by = attempt.label
                    return
                except ProviderError as error:
                    if visible:
                        raise
                    first_error = first_error or error
                    delay = self._delay(error, retry)
                    if delay is None:
                        log.warning("%s failed (%s); not retrying", attempt.label, error.kind.value)
                        break
                    log.warning("%s failed (%s); retrying in %.1f s", attempt.label, error.kind.value, delay)
                    await self._sleep(delay)
        assert first_error is not None, "no attempts were given"
        raise first_error

    def _delay(self, error: ProviderError, retry: int) -> float | None:
        """Seconds to wait before retrying, or None when this model should not be tried again."""
        if not error.retryable or retry >= self._max_retries:
            return None
        if error.retry_after is not None:
            # Waiting longer than the cap would leave the user staring at a typing indicator: give up instead.
            return error.retry_after if error.retry_after <= self._retry_after_cap else None
        return BACKOFF_BASE * 2**retry * (0.5 + self._rng())
