"""Reading a result page's text, without letting a URL reach inside our own network (SSRF)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

log = logging.getLogger(__name__)

MAX_BYTES = 2_000_000
MAX_REDIRECTS = 5
FETCH_SECONDS = 10.0
TEXT_CHARS = 3000  # page text handed to the model per result
METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}
TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
# Not globally reachable, per IANA's IPv4 and IPv6 special-purpose address registries (plus multicast and
# the deprecated site-local range). Listed here rather than left to `is_global`, which differs between
# Python releases (3.11.7 counts 192.0.0.9, fec0::/10 and 64:ff9b:1::/48 as global).
NON_GLOBAL_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the local host
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT; 100.100.100.200 is a cloud metadata address
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, 169.254.169.254 the usual metadata address
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
    )
)
NON_GLOBAL_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
        "2001::/23",  # IETF protocol assignments, Teredo among them
        "2001:db8::/32",
        "3fff::/20",  # documentation
    )
)
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")  # every global IPv6 address; the rest is local or reserved
# IPv6 forms that carry an IPv4 address a gateway or the host may deliver to: IPv4-mapped, IPv4-translated
# (SIIT), IPv4-compatible and NAT64. (6to4, 2002::/16, is read by `sixtofour`.)
EMBEDDING_V4 = tuple(
    ipaddress.IPv6Network(net) for net in ("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96", "64:ff9b::/96")
)


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
    if isinstance(address, ipaddress.IPv6Address):
        if (embedded := _embedded_ipv4(address)) is not None:
            return _is_public(embedded)
        if address not in GLOBAL_UNICAST or any(address in net for net in NON_GLOBAL_V6):
            return False
    elif any(address in net for net in NON_GLOBAL_V4):
        return False
    return address.is_global and not address.is_multicast


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries, judged in its place: Python counts NAT64, 6to4 and
    IPv4-translated addresses as global even when they wrap 127.0.0.1 or 169.254.169.254."""
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in EMBEDDING_V4):
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
    text = await asyncio.to_thread(_extract, body) if "<" in body else body
    return (text or "").strip()[:TEXT_CHARS]


def _extract(html: str) -> str | None:
    """The page's main text; trafilatura (and lxml under it) loads at the first page read, not at start."""
    import trafilatura

    return trafilatura.extract(html)


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
