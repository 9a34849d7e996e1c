"""The local API the main container reads its role from (default 127.0.0.1:4040).

Every response is computed from the election at request time, so a leader past its renew
deadline already answers standby even if no loop has run since. Only POST /heartbeat reads a
body (app_api.py), bounded by `client_max_size`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
from collections.abc import Callable

from aiohttp import web

from sidecar.core.config import split_address
from sidecar.engine.status import Snapshot, StatusBoard
from sidecar.publish import app_api
from sidecar.publish.openapi import OPENAPI

log = logging.getLogger("lease_sidecar.http")

MAX_WAIT_S = 300.0
"""Upper bound of `?wait=`: longer values are clamped, so a waiter always hears back."""
SSE_KEEPALIVE_S = 15.0

BOARD: web.AppKey[StatusBoard] = web.AppKey("board", StatusBoard)
ALIVE: web.AppKey[Callable[[], bool]] = web.AppKey("alive", Callable[[], bool])  # type: ignore[arg-type]


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message, "status": status}, status)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message, "status": 400}), content_type="application/json")


def _parse_non_negative(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _bad_request(f"{name}: not a number: {raw[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise _bad_request(f"{name}: must be a finite number >= 0")
    return value


def _parse_version(request: web.Request, name: str) -> int | None:
    """A version is a whole number: `since=0.5` is refused, as /openapi.json says."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit():
        raise _bad_request(f"{name}: not a whole number >= 0: {raw[:40]!r}")
    return int(raw)


async def get_leader(request: web.Request) -> web.Response:
    board = request.app[BOARD]
    wait = _parse_non_negative(request, "wait")
    since = _parse_version(request, "since")
    if wait is None or wait == 0:
        return _json(board.snapshot())
    return _json(await board.wait_for_change(since, min(wait, MAX_WAIT_S)))


async def get_leader_events(request: web.Request) -> web.StreamResponse:
    board = request.app[BOARD]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    snapshot: Snapshot = board.snapshot()
    kind = "leader"
    try:
        while True:
            # `leader` when the version changed; `renewal` when only the leader's deadline moved
            # (same version, same JSON shape): a stream always holds the newest deadline.
            event = f"id: {snapshot['version']}\nevent: {kind}\ndata: {json.dumps(snapshot)}\n\n"
            await response.write(event.encode())
            version, deadline = snapshot["version"], snapshot["valid_until_monotonic"]
            while True:
                snapshot = await board.wait_for_update(version, deadline, SSE_KEEPALIVE_S)
                if snapshot["version"] != version:
                    kind = "leader"
                    break
                if snapshot["valid_until_monotonic"] != deadline and snapshot["is_leader"]:
                    kind = "renewal"
                    break
                deadline = snapshot["valid_until_monotonic"]
                await response.write(b": keep-alive\n\n")
    except ConnectionResetError:
        pass  # the client went away; cancellation (server shutdown) propagates as it should
    return response


async def get_is_leader(request: web.Request) -> web.Response:
    leading = request.app[BOARD].snapshot()["is_leader"]
    return _json(leading, 200 if leading else 503)


async def get_root(request: web.Request) -> web.Response:
    """The retired k8s.gcr.io/leader-elector answered `{"name": "<holder>"}` here."""
    return _json({"name": request.app[BOARD].snapshot()["holder"] or ""})


async def get_healthz(request: web.Request) -> web.Response:
    alive = request.app[ALIVE]()
    return _json({"ok": alive}, 200 if alive else 503)


async def get_readyz(request: web.Request) -> web.Response:
    observed = request.app[BOARD].snapshot()["observed_at"] is not None
    return _json({"ok": observed}, 200 if observed else 503)


async def get_openapi(request: web.Request) -> web.Response:
    return _json(OPENAPI)


@web.middleware
async def json_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as error:
        allowed = sorted(error.allowed_methods)
        response = _json({"error": f"method {request.method[:20]} not allowed", "status": 405,
                          "allowed": allowed}, 405)
        response.headers["Allow"] = ", ".join(allowed)  # RFC 9110: a 405 names what is allowed
        return response
    except web.HTTPNotFound:
        return _error(404, f"no such path: {request.path[:100]}")
    except web.HTTPException as error:
        if error.content_type == "application/json":
            raise
        return _error(error.status, error.reason)
    except Exception:  # a bug must not take the election down with it
        log.exception("request failed", extra={"event": "http_error", "path": request.path[:100]})
        return _error(500, "internal error")


def build_app(board: StatusBoard, alive: Callable[[], bool],
              controls: app_api.AppControls | None = None) -> web.Application:
    # Only POST /heartbeat reads a body; anything larger than this is refused (413).
    app = web.Application(middlewares=[json_errors], client_max_size=app_api.MAX_BODY_BYTES)
    app[BOARD] = board
    app[ALIVE] = alive
    for path, handler in (("/leader", get_leader), ("/leader/events", get_leader_events),
                          ("/is-leader", get_is_leader), ("/", get_root), ("/healthz", get_healthz),
                          ("/readyz", get_readyz), ("/openapi.json", get_openapi)):
        app.router.add_get(path, handler, allow_head=True)
    if controls is not None:
        app_api.add_routes(app, controls)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start_site(app: web.Application, address: str, field_name: str) -> web.AppRunner:
    host, port = split_address(address, field_name)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner
