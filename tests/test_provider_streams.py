"""Many streams through one provider: spread over its HTTP clients, each timed by one moving deadline."""

from __future__ import annotations

import asyncio

import pytest

from bot.config import ProviderSettings
from bot.providers import clients
from bot.providers.base import ChatMessage, ChatRequest, ErrorKind, ProviderError, TextDelta, Timeouts
from bot.providers.openai_compat import OpenAICompatibleProvider
from tests.support.llm_server import LLMServer, Script

REQUEST = ChatRequest(model="m", messages=(ChatMessage("user", "hi"),))


def provider(llm: LLMServer, timeouts: Timeouts | None = None) -> OpenAICompatibleProvider:
    settings = ProviderSettings(base_url=llm.openai_base_url, api_key="sk-test")
    return OpenAICompatibleProvider("openrouter", settings, timeouts or Timeouts())


async def text(stream: OpenAICompatibleProvider) -> str:
    return "".join([e.text async for e in stream.stream(REQUEST) if isinstance(e, TextDelta)])


async def test_streams_spread_over_clients_and_give_them_back(
    llm: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clients, "STREAMS_PER_CLIENT", 2)
    gate = asyncio.Semaphore(0)
    llm.enqueue(*[Script(tokens=["a", "b"], gate=gate) for _ in range(5)], Script(status=500))
    openrouter = provider(llm)
    streams = [asyncio.create_task(text(openrouter)) for _ in range(5)]
    while len(llm.chat_requests()) < 5:
        await asyncio.sleep(0.01)
    assert openrouter._clients.count == 3  # two streams each, the fifth on a third client
    for _ in range(10):
        gate.release()
    assert await asyncio.gather(*streams) == ["ab"] * 5
    with pytest.raises(ProviderError):  # a request refused gives its client back too
        await text(openrouter)
    assert set(openrouter._clients._streams.values()) == {0}
    await openrouter.aclose()


async def test_the_gap_deadline_moves_forward_with_every_event(llm: LLMServer) -> None:
    """Fifteen tokens 0.1 s apart take longer than one gap, which is timed from each event anew."""
    llm.enqueue(Script(tokens=[f"{i} " for i in range(15)], delay=0.1))
    openrouter = provider(llm, Timeouts(first_token=5.0, chunk_gap=1.0))
    assert await text(openrouter) == "".join(f"{i} " for i in range(15))
    await openrouter.aclose()


async def test_a_stalled_stream_times_out_but_a_cancelled_one_is_cancelled(llm: LLMServer) -> None:
    llm.enqueue(Script(tokens=["a", "b"], stall_after=1), Script(tokens=["a", "b"], stall_after=1))
    openrouter = provider(llm, Timeouts(first_token=5.0, chunk_gap=0.3))
    with pytest.raises(ProviderError) as caught:
        await text(openrouter)
    assert caught.value.kind is ErrorKind.TIMEOUT and "between two parts" in caught.value.detail
    patient = provider(llm, Timeouts(first_token=5.0, chunk_gap=60.0))
    reading = asyncio.create_task(text(patient))
    while len(llm.chat_requests()) < 2:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # let it read the first token and wait for the next
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await openrouter.aclose()
    await patient.aclose()
