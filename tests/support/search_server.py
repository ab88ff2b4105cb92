"""A loopback SearXNG-style search API and the pages its results point to.

async with SearchServer() as web:
    web.pages["/a"] = "<html>…</html>"
    web.results = [("Title", "/a", "snippet")]   # paths on this server, or full URLs
    settings = Settings(search_backend="searxng", searxng_url=web.base_url, fetch_allow_private=True)
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.support.loopback import serve_app


class SearchServer:
    def __init__(self) -> None:
        self.results: list[tuple[str, str, str]] = []
        self.pages: dict[str, str] = {}
        self.redirects: dict[str, str] = {}
        self.status = 200  # set to make /search fail
        self.body: object | None = None  # set to answer /search with this JSON instead of the results
        self.queries: list[str] = []
        self.params: list[dict[str, str]] = []  # every search request's query parameters
        self.page_hits: list[str] = []
        self.page_hosts: list[str] = []  # the Host header of every page request
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> dict[str, Any]:
        """The Settings values that make the engine search here and read its pages."""
        return {"search_backend": "searxng", "searxng_url": self.base_url, "fetch_allow_private": True}

    async def __aenter__(self) -> SearchServer:
        app = web.Application()
        app.router.add_get("/search", self._search)
        app.router.add_get("/res/v1/web/search", self._brave)
        app.router.add_get("/{path:.*}", self._page)
        self._runner, self.port = await serve_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def _url(self, target: str) -> str:
        return target if "://" in target else f"{self.base_url}{target}"

    async def _search(self, request: web.Request) -> web.Response:
        self.queries.append(request.query.get("q", ""))
        self.params.append(dict(request.query))
        if self.status != 200 or request.query.get("format") != "json":
            return web.json_response({"error": "down"}, status=self.status if self.status != 200 else 400)
        if self.body is not None:
            return web.json_response(self.body)
        results = [
            {"url": self._url(url), "title": title, "content": snippet, "engine": "duckduckgo", "score": 1.0}
            for title, url, snippet in self.results
        ]
        return web.json_response({"query": request.query["q"], "number_of_results": 0, "results": results})

    async def _brave(self, request: web.Request) -> web.Response:
        self.queries.append(request.query.get("q", ""))
        self.params.append(dict(request.query))
        if request.headers.get("X-Subscription-Token") != "brave-key":
            return web.json_response({"type": "ErrorResponse"}, status=401)
        results = [
            {
                "title": title,
                "url": self._url(url),
                "description": f"The <strong>{snippet}</strong> &amp; more",
            }
            for title, url, snippet in self.results
        ]
        return web.json_response({"type": "search", "web": {"type": "search", "results": results}})

    async def _page(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.page_hits.append(path)
        self.page_hosts.append(request.headers.get("Host", ""))
        if path in self.redirects:
            raise web.HTTPFound(self._url(self.redirects[path]))
        if path == "/nowhere":
            return web.Response(status=302)  # a redirect without a Location
        if path == "/huge":
            response = web.StreamResponse(headers={"Content-Type": "text/html"})
            await response.prepare(request)
            for _ in range(300):
                await response.write(b"<p>" + b"x" * 10_000 + b"</p>")
            return response
        if path == "/binary":
            return web.Response(body=b"%PDF-1.7", content_type="application/pdf")
        if path not in self.pages:
            return web.Response(status=404, text="not found")
        return web.Response(text=self.pages[path], content_type="text/html")
