"""Reading a result page's text, without letting a URL reach inside our own network (SSRF)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
import trafilatura

log = logging.getLogger(__name__)

MAX_BYTES = 2_000_000
MAX_REDIRECTS = 5
FETCH_SECONDS = 10.0
TEXT_CHARS = 3000  # page text handed to the model per result
METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}
TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class FetchRefused(Exception):
    """The URL may not be fetched, or fetching it failed; the message says why."""


async def safe_address(url: str, *, allow_private: bool) -> tuple[str, str]:
    """The (host, IP) a URL may be fetched from, or FetchRefused.

    Every address the name resolves to must be public: one private answer among public ones is how
    DNS rebinding slips through. The IP returned is the one to connect to, so the check cannot be
    raced by a second lookup.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(f"only http and https pages are read, not {parts.scheme or 'this'}: links")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise FetchRefused("the link has no host")
    if host in METADATA_HOSTS:
        raise FetchRefused("cloud metadata addresses are never read")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError:
        raise FetchRefused(f"{host} could not be resolved") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not allow_private:
        for address in addresses:
            if not _is_public(address):
                raise FetchRefused(f"{host} points into a private network")
    return host, str(addresses[0])


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(address)):
        address = embedded
    return address.is_global and not address.is_multicast


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries, where a gateway may deliver it there.

    Python counts NAT64 (64:ff9b::/96), 6to4 (2002::/16) and IPv4-compatible (::/96) addresses as
    global even when they wrap 127.0.0.1 or 169.254.169.254.
    """
    if embedded := address.ipv4_mapped or address.sixtofour:
        return embedded
    if address in NAT64 or address in IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


async def read_page(url: str, *, allow_private: bool = False, client: httpx.AsyncClient | None = None) -> str:
    """The readable text of a page (cut to TEXT_CHARS), following redirects only to allowed addresses."""
    own_client = client is None
    client = client or httpx.AsyncClient(follow_redirects=False)
    try:
        async with asyncio.timeout(FETCH_SECONDS):
            body = await _fetch(client, url, allow_private)
    except TimeoutError:
        raise FetchRefused("the page took too long") from None
    finally:
        if own_client:
            await client.aclose()
    text = await asyncio.to_thread(trafilatura.extract, body) if "<" in body else body
    return (text or "").strip()[:TEXT_CHARS]


async def _fetch(client: httpx.AsyncClient, url: str, allow_private: bool) -> str:
    for _hop in range(MAX_REDIRECTS + 1):
        host, ip = await safe_address(url, allow_private=allow_private)
        parts = urlsplit(url)
        pinned = parts._replace(netloc=_netloc(ip, parts.port))
        request = client.build_request(
            "GET",
            urlunsplit(pinned),
            headers={"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": "Parley/0.1 (+page reader)"},
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise FetchRefused(f"the page could not be fetched ({type(error).__name__})") from None
        try:
            if response.is_redirect:
                location = response.headers.get("location", "").strip()
                if not location:
                    raise FetchRefused("the page redirected without saying where")
                url = urljoin(url, location)
                continue  # the next hop is checked like the first
            if response.status_code >= 400:
                raise FetchRefused(f"the page answered HTTP {response.status_code}")
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type and content_type not in TEXT_TYPES:
                raise FetchRefused(f"the page is {content_type}, not text")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_BYTES:
                raise FetchRefused("the page is too large")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_BYTES:
                    raise FetchRefused("the page is too large")
                chunks.append(chunk)
            return b"".join(chunks).decode(response.encoding or "utf-8", "replace")
        finally:
            await response.aclose()
    raise FetchRefused("the page redirected too many times")


def _netloc(ip: str, port: int | None) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if port else host
