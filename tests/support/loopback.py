"""Serving a test's aiohttp app on loopback at a free port."""

from __future__ import annotations

import ssl

from aiohttp import web


async def serve_app(app: web.Application, tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """Start `app` on 127.0.0.1 (over TLS with `tls`); returns the runner (to clean up) and its port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    return runner, runner.addresses[0][1]
