"""The HTTP half both provider APIs share: send a streaming request, then read SSE events under deadlines.

The body is read a piece at a time (what one socket read brought: bot/providers/http11.py) and every
event in a piece is parsed from it in one pass, by httpx-sse's own line and event decoders, so the
deadline and the awaits between the socket and the provider are paid per read rather than per event.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder  # what EventSource.aiter_sse parses with

from bot.providers.base import ErrorKind, ProviderError, Timeouts
from bot.providers.clients import Clients
from bot.providers.deadline import Deadline
from bot.providers.http_errors import error_from_response, error_from_transport


class SSEStream:
    """One streaming response: content must begin within `first_token`, then never pause past `chunk_gap`."""

    def __init__(self, provider: str, model: str, timeouts: Timeouts, base_url: str) -> None:
        self._provider = provider
        self._model = model
        self._timeouts = timeouts
        self._base_url = base_url  # named in errors that are about the address
        self._response: httpx.Response | None = None
        self._clients: Clients | None = None
        self._client: httpx.AsyncClient | None = None
        self._text: Any = None  # the body's text, a read at a time
        self._lines = SSELineDecoder()
        self._decoder = SSEDecoder()
        self._deadline = 0.0
        self._begun = False

    async def open(
        self,
        clients: Clients,
        url: str,
        body: bytes,  # JSON
        headers: dict[str, str],
        secret: str | None,
    ) -> None:
        """Send the request; the stream holds one of `clients` until `aclose` (or a failure here)."""
        self._clients, self._client = clients, clients.acquire()
        try:
            await self._open(self._client, url, body, headers, secret)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._clients is not None and self._client is not None:
            self._clients.release(self._client)
        self._client = None

    async def _open(
        self,
        client: httpx.AsyncClient,
        url: str,
        body: bytes,  # JSON
        headers: dict[str, str],
        secret: str | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self._timeouts.first_token
        headers = {**headers, "Content-Type": "application/json"}
        request = client.build_request("POST", url, content=body, headers=headers)
        try:
            async with asyncio.timeout(self._timeouts.first_token):
                response = await client.send(request, stream=True)
        except TimeoutError:
            raise self._timeout(self._timeouts.first_token, "to start answering") from None
        except httpx.TransportError as error:
            raise error_from_transport(self._provider, self._model, self._base_url, error) from None
        if response.status_code >= 400:
            raw = await response.aread()
            await response.aclose()
            raise error_from_response(
                self._provider,
                self._model,
                response.status_code,
                raw,
                response.headers,
                secret,
                self._base_url,
            )
        content_type = response.headers.get("content-type", "").partition(";")[0]
        if "text/event-stream" not in content_type:  # as httpx-sse's EventSource refuses it
            await response.aclose()
            raise self.broken(f"the response is not an event stream ({content_type or 'no content type'})")
        self._response = response
        self._text = response.aiter_text()
        self._loop = loop
        self._reads = Deadline()

    def content_begun(self) -> None:
        """From now on only the gap between events is timed."""
        self._begun = True

    async def next_events(self) -> list[ServerSentEvent] | None:
        """The events of the next read that completes any (at least one), or None at the end of the body.

        The deadline is the one of the moment it is called: reads that bring no whole event (a comment,
        half an event) do not move it."""
        deadline = self._loop.time() + self._timeouts.chunk_gap if self._begun else self._deadline
        while True:
            try:
                text = await self._reads.wait(anext(self._text), deadline)
            except StopAsyncIteration:
                return self._parsed(self._lines.flush()) or None
            except TimeoutError:
                if self._begun:
                    raise self._timeout(self._timeouts.chunk_gap, "between two parts of the reply") from None
                raise self._timeout(self._timeouts.first_token, "to start answering") from None
            except httpx.TransportError as error:
                raise self.broken(type(error).__name__) from None
            if events := self._parsed(self._lines.decode(text)):
                return events

    def _parsed(self, lines: list[str]) -> list[ServerSentEvent]:
        decode = self._decoder.decode
        return [event for event in map(decode, lines) if event is not None]

    async def aclose(self, *, drain: bool = False) -> None:
        """Close the response; `drain` reads what is left first, so the connection goes back to the pool."""
        if self._response is None:
            self._release()
            return
        self._reads.close()
        if drain:
            try:
                async with asyncio.timeout(1.0):
                    async for _ in self._text:
                        pass
            except (TimeoutError, httpx.HTTPError):
                pass
        try:
            await self._response.aclose()
        finally:
            self._release()

    def broken(self, detail: str) -> ProviderError:
        return ProviderError(
            ErrorKind.BROKEN_STREAM, provider=self._provider, model=self._model, detail=detail, retryable=True
        )

    def _timeout(self, seconds: float, what: str) -> ProviderError:
        return ProviderError(
            ErrorKind.TIMEOUT,
            provider=self._provider,
            model=self._model,
            detail=f"took more than {seconds:g} s {what}",
        )
