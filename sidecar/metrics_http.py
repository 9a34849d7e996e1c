"""The metrics listener: /metrics in Prometheus text, or OpenMetrics when the scraper asks."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)


async def get_metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(request.app[REGISTRY]), headers={"Content-Type": content_type})


async def get_healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def build_app(registry: CollectorRegistry) -> web.Application:
    app = web.Application(client_max_size=1024)
    app[REGISTRY] = registry
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_healthz)
    return app
