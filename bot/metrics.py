"""What operators watch: Prometheus metrics of replies, tokens, cost and errors, and a health check.

`/metrics` (Prometheus text format) and `/healthz` (200 when the store answers and at least one platform
is up, 503 otherwise, with a small JSON status) are served on METRICS_PORT in every mode, and in Slack's
HTTP mode on PORT beside the events.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bot.accounting import Ledger
from bot.config import SetupError

if TYPE_CHECKING:
    from bot.store import Store

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0, 120.0, 300.0)
STORE_TIMEOUT = 2.0  # seconds /healthz waits for the database


class Metrics:
    """One registry per engine, so several engines in one process (tests) never mix their figures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.replies = Counter(
            "parley_replies", "Replies by platform and outcome", ["platform", "outcome"], registry=r
        )
        self.first_text = Histogram(
            "parley_first_text_seconds",
            "From a reply's start to its first text from the model",
            ["platform"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.final_text = Histogram(
            "parley_final_text_seconds",
            "From a reply's start to its final text",
            ["platform"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("parley_tokens", "Tokens by model and kind", ["model", "kind"], registry=r)
        self.cost = Counter("parley_cost_usd", "Cost in USD by model, where known", ["model"], registry=r)
        self.searches = Counter("parley_searches", "Web searches by backend", ["backend"], registry=r)
        self.provider_errors = Counter(
            "parley_provider_errors", "Replies a provider failed, by kind of error", ["kind"], registry=r
        )
        self.platform_429s = Counter(
            "parley_platform_rate_limited", "429 answers from a chat platform", ["platform"], registry=r
        )
        self.refused = Counter(
            "parley_refused",
            "Messages refused by access lists, rate limits or budgets",
            ["reason"],
            registry=r,
        )
        self.pending = Gauge("parley_inbox_pending", "Messages accepted and not yet answered", registry=r)
        self.active = Gauge("parley_active_streams", "Replies under way", registry=r)

    def spent(self, ledger: Ledger) -> None:
        for model, usage in ledger.models.items():
            for kind, count in (
                ("prompt", usage.prompt_tokens),
                ("completion", usage.completion_tokens),
                ("reasoning", usage.reasoning_tokens),
                ("cached", usage.cached_tokens),
            ):
                if count:
                    self.tokens.labels(model, kind).inc(count)
            if usage.cost:
                self.cost.labels(model).inc(usage.cost)
        for backend, count in ledger.searches.items():
            self.searches.labels(backend).inc(count)


class Health:
    """Which platforms are up, as the process that runs them reports it."""

    def __init__(self) -> None:
        self.platforms: dict[str, bool] = {}

    def up(self, name: str) -> None:
        self.platforms[name] = True

    def down(self, name: str) -> None:
        self.platforms[name] = False


def routes(store: Store, metrics: Metrics, health: Health) -> list[web.RouteDef]:
    """The two operator endpoints, for any aiohttp application (their own, or Slack's events server)."""

    async def healthz(request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                await store.ping()
            store_state = "up"
        except Exception as error:  # a database that is down is what this endpoint reports
            log.warning("health check: the store is down (%s)", type(error).__name__)
            store_state = "down"
        platforms = {name: "up" if up else "down" for name, up in health.platforms.items()}
        healthy = store_state == "up" and any(health.platforms.values())
        body = {"status": "ok" if healthy else "unhealthy", "store": store_state, "platforms": platforms}
        return web.json_response(body, status=200 if healthy else 503)

    async def scrape(request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                metrics.pending.set(await store.pending_count())
        except Exception as error:  # the other figures are still worth serving
            log.warning("metrics: could not count the pending messages (%s)", type(error).__name__)
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/metrics", scrape)]


async def serve(
    store: Store, metrics: Metrics, health: Health, port: int, host: str = "0.0.0.0"
) -> web.AppRunner:
    """Serve /healthz and /metrics on their own port; the runner's cleanup() stops it."""
    app = web.Application()
    app.add_routes(routes(store, metrics, health))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        reason = "another program uses it" if error.errno == errno.EADDRINUSE else error.strerror or error
        raise SetupError(f"could not serve /metrics and /healthz on METRICS_PORT {port} ({reason})") from None
    return runner
