"""A small round-robin HTTP load balancer on loopback: each request goes to the next backend in turn
(skipping one that refuses the connection, as a balancer's health check would), so Slack's deliveries
and retries reach different instances."""

from __future__ import annotations

import itertools
from types import TracebackType

import aiohttp
from aiohttp import web

from tests.support.loopback import serve_app


class Balancer:
    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.served: list[int] = []  # the backend port of each request, in order
        self._next = itertools.cycle(range(len(ports)))
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> Balancer:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._http = aiohttp.ClientSession()
        self._runner, port = await serve_app(app)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._http is not None
        await self._http.close()
        await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        for _ in self.ports:
            port = self.ports[next(self._next)]
            url = f"http://127.0.0.1:{port}{request.path_qs}"
            try:
                async with self._http.request(request.method, url, data=body, headers=headers) as answer:
                    self.served.append(port)
                    return web.Response(status=answer.status, body=await answer.read())
            except aiohttp.ClientConnectionError:
                continue
        return web.Response(status=502)
