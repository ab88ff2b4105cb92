"""httpcore's HTTP/1.1 connection, handing a response body over by the read rather than by the chunk.

A streamed reply sends every token in a chunk of its own, and h11 parses each chunk into a `Data` event;
httpcore hands each one up its generators (the connection's, the pool's, then httpx's transport,
its raw, byte and text iterators and the SSE reader), so every token paid for every layer even when a
socket read had brought a dozen. Here the `Data` events h11 has already parsed from what was read are
joined and handed up as one piece: the same bytes in the same order, h11 still the parser.

httpcore builds its HTTP/1.1 connection inside `AsyncHTTPConnection.handle_async_request`, so the pool
makes connections of a subclass that builds this one (Parley offers only HTTP/1.1: httpx's TLS context
asks ALPN for no HTTP/2). Used by the pools bot/providers/clients.py makes.

The connections' locks are asyncio's: httpcore's (anyio's) hands the event loop a pass at every
acquire, free or not, and a request takes two of them to start and one to end. With a thousand replies
streaming a pass of the loop takes a few hundred milliseconds, paid by every request before it is sent
and by every reply before its final text. asyncio's lock waits only while another holds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpcore


class HTTP11Connection(httpcore.AsyncHTTP11Connection):
    def __init__(
        self, origin: httpcore.Origin, stream: httpcore.AsyncNetworkStream, keepalive_expiry: float | None
    ) -> None:
        super().__init__(origin=origin, stream=stream, keepalive_expiry=keepalive_expiry)
        self._state_lock = asyncio.Lock()  # type: ignore[assignment]

    async def _receive_response_body(self, request: httpcore.Request) -> AsyncIterator[bytes]:
        timeout = request.extensions.get("timeout", {}).get("read")
        event: object = await self._receive_event(timeout=timeout)
        while True:
            if type(event) is h11.Data:
                pieces = [event.data]
                broken: httpcore.RemoteProtocolError | None = None
                try:
                    while type(event := self._parsed()) is h11.Data:  # what the last read brought as well
                        pieces.append(event.data)
                except httpcore.RemoteProtocolError as error:  # after what came before it
                    broken = error
                yield b"".join(pieces)
                if broken is not None:
                    raise broken
                if event is not h11.NEED_DATA:
                    continue  # the end of the body, parsed from the same read
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return
            event = await self._receive_event(timeout=timeout)

    def _parsed(self) -> object:
        """The next event h11 has parsed from what was read (h11.NEED_DATA when it needs more)."""
        try:
            return self._h11_state.next_event()
        except h11.RemoteProtocolError as error:  # as httpcore's own `_receive_event` maps it
            raise httpcore.RemoteProtocolError(error) from error


class HTTPConnection(httpcore.AsyncHTTPConnection):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._request_lock = asyncio.Lock()  # type: ignore[assignment]

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """httpcore's, with its HTTP/1.1 connection being ours."""
        if not self.can_handle_request(request.url.origin):
            raise RuntimeError(
                f"Attempted to send request to {request.url.origin} on connection to {self._origin}"
            )
        try:
            async with self._request_lock:
                if self._connection is None:
                    stream = await self._connect(request)
                    self._connection = HTTP11Connection(
                        origin=self._origin, stream=stream, keepalive_expiry=self._keepalive_expiry
                    )
        except BaseException:
            self._connect_failed = True
            raise
        return await self._connection.handle_async_request(request)


class ConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's pool, without a proxy (bot/providers/clients.py leaves proxies to httpx's own)."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        return HTTPConnection(
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            http1=True,
            http2=False,
            retries=self._retries,
            local_address=self._local_address,
            uds=self._uds,
            network_backend=self._network_backend,
            socket_options=self._socket_options,
        )
