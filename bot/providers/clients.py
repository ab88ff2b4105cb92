"""The HTTP clients one provider streams through: as many as its concurrent streams need.

httpcore's pool scans every connection it holds each time a request starts or a response closes, and
for every idle connection it counts them all again, so one client carrying a thousand streams spends
more time in that scan than reading tokens. Streams go to the least busy client instead, a new client
opening once every one carries STREAMS_PER_CLIENT; each keeps alive as many connections as it carries
streams, so a burst of replies reuses connections rather than opening (and, against a real provider,
handshaking) new ones. Each client reads through bot/providers/network.py's backend, unless the
environment names a proxy: then httpx's own transports carry the requests, as they always did.
"""

from __future__ import annotations

import ssl
import urllib.request

import httpcore
import httpx

from bot.providers.base import Timeouts
from bot.providers.http11 import ConnectionPool
from bot.providers.network import AsyncioBackend

STREAMS_PER_CLIENT = 64


def make_client(timeouts: Timeouts, tls: ssl.SSLContext) -> httpx.AsyncClient:
    # Reads are bounded by our own first-token and gap deadlines, not httpx's.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=STREAMS_PER_CLIENT)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=timeouts.connect, read=None, write=30.0, pool=None),
        limits=limits,
        verify=tls,
        # A transport of our own turns off httpx's proxies from the environment: keep them where set.
        transport=None if _proxied() else Transport(_pool(tls, limits)),
    )


class Transport(httpx.AsyncHTTPTransport):
    """httpx's transport over a pool that reads through AsyncioBackend (httpx's own constructor takes
    no network backend; its methods use the pool alone)."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._pool = pool


def _pool(tls: ssl.SSLContext, limits: httpx.Limits) -> httpcore.AsyncConnectionPool:
    return ConnectionPool(
        ssl_context=tls,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )


def _proxied() -> bool:
    """Whether the environment names a proxy (HTTPS_PROXY, ALL_PROXY, ...): httpx reads the same."""
    return any(scheme != "no" for scheme in urllib.request.getproxies())


class Clients:
    def __init__(self, timeouts: Timeouts) -> None:
        self._timeouts = timeouts
        # Loading the CA certificates takes tens of milliseconds: once, not in every client of a burst.
        self._tls = httpx.create_ssl_context()
        self._streams: dict[httpx.AsyncClient, int] = {make_client(timeouts, self._tls): 0}

    @property
    def first(self) -> httpx.AsyncClient:
        """For short requests (model lists): any client does."""
        return next(iter(self._streams))

    def acquire(self) -> httpx.AsyncClient:
        """The client for one more stream; give it back with `release` when the stream is closed."""
        client = min(self._streams, key=self._streams.__getitem__)
        if self._streams[client] >= STREAMS_PER_CLIENT:
            client = make_client(self._timeouts, self._tls)
        self._streams[client] = self._streams.get(client, 0) + 1
        return client

    def release(self, client: httpx.AsyncClient) -> None:
        self._streams[client] -= 1

    @property
    def count(self) -> int:
        return len(self._streams)

    async def aclose(self) -> None:
        for client in self._streams:
            await client.aclose()
