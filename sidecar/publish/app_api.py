"""The app's side of the local API: POST /heartbeat, POST /leader/resign, GET /members.

Thin: bodies are read here (bounded, validated against the same rules /openapi.json states) and
handed to the engine through `AppControls`; every decision is the core's (core/liveness.py,
core/members.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sidecar.core.liveness import AppInfo
from sidecar.engine.status import Snapshot

MAX_BODY_BYTES = 8192
"""Largest heartbeat body accepted (413 beyond). The schema's limits keep a valid one under 5 KiB."""
MAX_TASK_CHARS = 256
MAX_DETAIL_PROPERTIES = 16
MAX_DETAIL_KEY_CHARS = 64
MAX_DETAIL_STRING_CHARS = 256
MAX_SCHEDULE_COUNT = 2**31 - 1
MAX_SIT_OUT_S = 3600.0


@dataclass(frozen=True)
class AppControls:
    """What the engine offers the app. Each returns what the answer shows."""

    heartbeat: Callable[[AppInfo | None], Snapshot]
    """The app is alive; info (None: none given) replaces the last. Returns the /leader JSON."""
    resign: Callable[[float | None], Snapshot]
    """Give leadership up and sit out `sit_out_s` (None: the default). Returns the /leader JSON,
    already standby."""
    members: Callable[[], dict[str, Any]]
    """The /members JSON."""


CONTROLS: web.AppKey[AppControls] = web.AppKey("controls", AppControls)


class BadBody(ValueError):
    """The heartbeat body breaks a rule; str(self) says which, in one line."""


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message, "status": 400}), content_type="application/json")


def _reject_constant(name: str) -> float:
    raise BadBody(f"not JSON: {name} is not a number")


def parse_heartbeat(raw: bytes) -> AppInfo | None:
    """The body of POST /heartbeat: empty (liveness only) or the object /openapi.json describes."""
    if not raw.strip():
        return None
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        raise BadBody(f"not JSON: {str(error)[:80]}") from None
    if not isinstance(body, dict):
        raise BadBody("must be a JSON object")
    unknown = sorted(set(body) - {"schedule_count", "next_due_task", "detail"})
    if unknown:
        raise BadBody(f"unknown field {unknown[0][:40]!r} (allowed: schedule_count, next_due_task, detail)")
    info: AppInfo = {}
    if "schedule_count" in body:
        count = body["schedule_count"]
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_SCHEDULE_COUNT:
            raise BadBody(f"schedule_count: must be an integer from 0 to {MAX_SCHEDULE_COUNT}")
        info["schedule_count"] = count
    if "next_due_task" in body:
        task = body["next_due_task"]
        if task is not None and (not isinstance(task, str) or len(task) > MAX_TASK_CHARS):
            raise BadBody(f"next_due_task: must be null or a string of at most {MAX_TASK_CHARS} characters")
        info["next_due_task"] = task
    if "detail" in body:
        info["detail"] = _detail(body["detail"])
    return info


def _detail(detail: object) -> dict[str, Any]:
    if not isinstance(detail, dict):
        raise BadBody("detail: must be an object")
    if len(detail) > MAX_DETAIL_PROPERTIES:
        raise BadBody(f"detail: at most {MAX_DETAIL_PROPERTIES} properties")
    for key, value in detail.items():
        if len(key) > MAX_DETAIL_KEY_CHARS:
            raise BadBody(f"detail: keys have at most {MAX_DETAIL_KEY_CHARS} characters")
        if isinstance(value, str):
            if len(value) > MAX_DETAIL_STRING_CHARS:
                raise BadBody(f"detail.{key[:40]}: strings have at most {MAX_DETAIL_STRING_CHARS} characters")
        elif isinstance(value, float) and not math.isfinite(value):
            raise BadBody(f"detail.{key[:40]}: numbers must be finite")
        elif value is not None and not isinstance(value, bool | int | float):
            raise BadBody(f"detail.{key[:40]}: must be a string, number, boolean or null")
    return dict(detail)


def parse_sit_out(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _bad_request(f"sit_out: not a number of seconds: {raw[:40]!r}") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_SIT_OUT_S:
        raise _bad_request(f"sit_out: must be from 0 to {MAX_SIT_OUT_S:g} seconds")
    return value


async def post_heartbeat(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    raw = await request.read()  # aiohttp refuses beyond client_max_size (413) even without a length
    try:
        info = parse_heartbeat(raw)
    except BadBody as error:
        raise _bad_request(str(error)) from None
    return _json(request.app[CONTROLS].heartbeat(info))


async def post_resign(request: web.Request) -> web.Response:
    sit_out_s = parse_sit_out(request.query.get("sit_out"))
    return _json(request.app[CONTROLS].resign(sit_out_s))


async def get_members(request: web.Request) -> web.Response:
    return _json(request.app[CONTROLS].members())


def _json(body: object) -> web.Response:
    return web.Response(text=json.dumps(body), content_type="application/json")


def add_routes(app: web.Application, controls: AppControls) -> None:
    app[CONTROLS] = controls
    app.router.add_post("/heartbeat", post_heartbeat)
    app.router.add_post("/leader/resign", post_resign)
    app.router.add_get("/members", get_members, allow_head=True)
