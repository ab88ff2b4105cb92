"""httpcore's network backend on an asyncio protocol: the socket is read as data arrives, into a buffer.

httpcore's own backend reads through anyio, which for every chunk resumes the socket's reads, waits,
pauses them again (an epoll registration each way), enters a cancel scope even when there is no
timeout and asks sniffio which library runs. A streamed reply is hundreds of small chunks, and a
thousand streams make that most of the CPU a token costs. Here a protocol takes what the transport
receives into a buffer and `read` hands it over; a read that must wait arms one timer only when it has
a timeout. Reading pauses past HIGH_WATER bytes held and resumes once a reader has taken them.

Used for TCP and TLS connections (every provider's); Unix sockets go through httpcore's own backend,
and requests through a proxy through httpx's own transports (bot/providers/clients.py).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any, cast

import httpcore
from httpcore import ConnectError, ConnectTimeout, ReadError, ReadTimeout, WriteError, WriteTimeout

HIGH_WATER = 256 * 1024  # bytes held unread before the socket's reads pause
LOW_WATER = 64 * 1024  # and resume when a reader has brought them down to this


class AsyncioStream(asyncio.Protocol, httpcore.AsyncNetworkStream):
    """One connection: the protocol its transport feeds, and the stream httpcore reads and writes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._eof = False
        self._error: Exception | None = None  # why the connection was lost, if not a clean close
        self._reader: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None

    # The transport's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake(self._reader)

    def eof_received(self) -> None:
        self._eof = True  # returning None lets the transport close itself
        self._wake(self._reader)

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake(self._reader)
        self._wake(self._drained)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake(self._drained)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # httpcore's side

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._chunks:
            if not self._eof:
                self._reader = self._loop.create_future()
                try:
                    await _within(self._reader, timeout, ReadTimeout)
                finally:
                    self._reader = None
            if not self._chunks:
                if self._error is not None:
                    raise ReadError(str(self._error) or type(self._error).__name__) from self._error
                return b""  # the end of the stream
        return self._take(max_bytes)

    def _take(self, max_bytes: int) -> bytes:
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        elif self._chunks and len(chunk) < max_bytes:  # more waiting: hand over as much as fits at once
            pieces = [chunk]
            size = len(chunk)
            while self._chunks and size + len(self._chunks[0]) <= max_bytes:
                pieces.append(self._chunks.popleft())
                size += len(pieces[-1])
            chunk = b"".join(pieces)
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= LOW_WATER and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        return chunk

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport is None or self._transport.is_closing():
            raise WriteError("the connection is closed") from self._error
        self._transport.write(buffer)
        while self._writing_paused and self._error is None and not self._transport.is_closing():
            self._drained = self._loop.create_future()
            try:
                await _within(self._drained, timeout, WriteTimeout)
            finally:
                self._drained = None
        if self._error is not None:
            raise WriteError(str(self._error) or type(self._error).__name__) from self._error

    async def aclose(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """The same stream over TLS (the protocol stays, the transport is the TLS one); httpcore has set
        the context's ALPN protocols."""
        assert self._transport is not None
        try:
            async with asyncio.timeout(timeout):
                transport = await self._loop.start_tls(
                    self._transport, self, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as error:
            self._transport.abort()
            raise ConnectTimeout("the TLS handshake timed out") from error
        except OSError as error:  # ssl.SSLError among them
            self._transport.abort()
            raise ConnectError(str(error)) from error
        self._transport = transport
        return self

    def get_extra_info(self, info: str) -> Any:
        if self._transport is None:
            return None
        if info == "is_readable":  # on an idle connection: the peer closed it, or sent what it should not
            return bool(self._chunks) or self._eof or self._transport.is_closing()
        name = _EXTRA_INFO.get(info)
        return None if name is None else self._transport.get_extra_info(name)


# httpcore's names for what it asks of a stream, and asyncio's for the same.
_EXTRA_INFO = {
    "ssl_object": "ssl_object",
    "client_addr": "sockname",
    "server_addr": "peername",
    "socket": "socket",
}


async def _within(waiter: asyncio.Future[None], seconds: float | None, error: type[Exception]) -> None:
    """Wait for `waiter`; past `seconds` raise `error` (no timer at all when there is no limit)."""
    if seconds is None:
        await waiter
        return
    timer = asyncio.get_running_loop().call_later(seconds, _expire, waiter, error, seconds)
    try:
        await waiter
    finally:
        timer.cancel()


def _expire(waiter: asyncio.Future[None], error: type[Exception], seconds: float) -> None:
    if not waiter.done():
        waiter.set_exception(error(f"timed out after {seconds:g} s"))


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, stream = await loop.create_connection(
                    lambda: AsyncioStream(loop), host, port, local_addr=local
                )
        except TimeoutError as error:  # also a socket's own ETIMEDOUT, as with httpcore's backend
            raise ConnectTimeout(str(error) or "timed out") from error
        except OSError as error:  # refused, unreachable, unknown host (socket.gaierror)
            raise ConnectError(str(error)) from error
        sock: socket.socket = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Parley connects to no Unix socket; httpcore's own backend does it if ever asked."""
        return await httpcore.AnyIOBackend().connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
