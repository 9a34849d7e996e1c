"""`POST /leader/handover?to=<identity>` on the local API: the leader releases to that successor.

Thin: the request is validated here and handed to the election (`core.succession` and the
Elector decide); the answer is 202 once the Elector has taken it (the release follows at once,
standby published first), 409 when this candidate is not the leader, 400 for a bad `to`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

from sidecar.engine.status import Snapshot


class HandoverRefused(Exception):
    """This candidate cannot hand over (not leading, or shutting down); str(self) says why."""


RequestHandover = Callable[[str], Snapshot]
"""Asks the election to release to the named successor; returns the /leader JSON (already
standby) or raises HandoverRefused."""

HANDOVER: web.AppKey[RequestHandover] = web.AppKey("handover", RequestHandover)  # type: ignore[arg-type]
MAX_IDENTITY_CHARS = 253


def _answer(body: object, status: int) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


async def post_handover(request: web.Request) -> web.Response:
    successor = request.query.get("to", "")
    if not successor or len(successor) > MAX_IDENTITY_CHARS or any(c.isspace() for c in successor):
        return _answer({"error": f"to: must be a holder identity, 1 to {MAX_IDENTITY_CHARS} characters "
                                 "without spaces", "status": 400}, 400)
    try:
        status = request.app[HANDOVER](successor)
    except HandoverRefused as error:
        return _answer({"error": str(error), "status": 409}, 409)
    return _answer({"handover_to": successor, "status": status}, 202)


def install(app: web.Application, request_handover: RequestHandover) -> None:
    """Adds the route to the local API app (before it starts)."""
    app[HANDOVER] = request_handover
    app.router.add_post("/leader/handover", post_handover)
