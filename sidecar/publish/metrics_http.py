"""The metrics listener: /metrics in Prometheus text, or OpenMetrics when the scraper asks.

It also answers /healthz and /readyz, because it is the port the kubelet can reach: the local
API stays on loopback, where probes from the node cannot go.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
ALIVE: web.AppKey[Callable[[], bool]] = web.AppKey("alive", Callable[[], bool])  # type: ignore[arg-type]
READY: web.AppKey[Callable[[], bool]] = web.AppKey("ready", Callable[[], bool])  # type: ignore[arg-type]


async def get_metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(request.app[REGISTRY]), headers={"Content-Type": content_type})


async def get_healthz(request: web.Request) -> web.Response:
    ok = request.app[ALIVE]()
    return web.json_response({"ok": ok}, status=200 if ok else 503)


async def get_readyz(request: web.Request) -> web.Response:
    """Ready once the lease was observed: never tied to leading, which would block rollouts."""
    ok = request.app[READY]()
    return web.json_response({"ok": ok}, status=200 if ok else 503)


def build_app(registry: CollectorRegistry, alive: Callable[[], bool], ready: Callable[[], bool]) -> web.Application:
    app = web.Application(client_max_size=1024)
    app[REGISTRY] = registry
    app[ALIVE] = alive
    app[READY] = ready
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_healthz)
    app.router.add_get("/readyz", get_readyz)
    return app
