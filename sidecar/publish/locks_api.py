"""Keyed locks on the local API (`--locks`): /locks/{key}.

POST try_acquire (`?ttl=`, `?wait=`), PUT renew (`?owner=`), DELETE release (`?owner=`), GET
is_locked (`?owner=` adds the owner's token and deadline). Thin: parsing and status codes here,
every decision in engine/keyed_locks.py and core/keyed_locks.py. 400 for a bad key, ttl, wait or
handle; 405 for other methods; 409 when held (or lost); 429 with Retry-After beyond the per-pod
request rate or key limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sidecar.core.keyed_locks import (
    KEY_PATTERN,
    MAX_WAIT_S,
    BadRequest,
    check_handle,
    check_key,
    parse_ttl_s,
    parse_wait_s,
)
from sidecar.engine.keyed_locks import KeyedLocks, LockRefused
from sidecar.publish.openapi import describe_locks

LOCKS: web.AppKey[KeyedLocks] = web.AppKey("locks", KeyedLocks)
PATH = r"/locks/{key:[\s\S]+}"  # any character, newlines included: a bad key is a 400, not a 404


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json", headers=headers)


def _refused(key: str, refusal: LockRefused) -> web.Response:
    body: dict[str, Any] = {"error": refusal.message, "status": refusal.status, "key": key,
                            "holder": refusal.holder, "lease": refusal.lease}
    headers = None
    if refusal.retry_after_s is not None:
        body["retry_after_seconds"] = round(refusal.retry_after_s, 3)
        headers = {"Retry-After": str(max(1, math.ceil(refusal.retry_after_s)))}
    return _json(body, refusal.status, headers)


Handler = Callable[[web.Request, KeyedLocks, str], Awaitable[web.Response]]


def _guarded(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def guarded(request: web.Request) -> web.Response:
        locks = request.app[LOCKS]
        key = request.match_info["key"]
        try:
            check_key(key)
            locks.admit()
            return await handler(request, locks, key)
        except BadRequest as error:
            return _json({"error": str(error), "status": 400}, 400)
        except LockRefused as refusal:
            return _refused(key[:200], refusal)
    return guarded


async def post_lock(request: web.Request, locks: KeyedLocks, key: str) -> web.Response:
    ttl_s = parse_ttl_s(request.query.get("ttl"), locks.max_ttl_s)
    wait_s = parse_wait_s(request.query.get("wait"))
    hold = await locks.acquire(key, ttl_s, wait_s)
    return _json({**locks.hold_json(hold), "ttl_seconds": ttl_s})


async def put_lock(request: web.Request, locks: KeyedLocks, key: str) -> web.Response:
    owner = check_handle(request.query.get("owner"))
    return _json(locks.hold_json(locks.renew_hold(key, owner)))


async def delete_lock(request: web.Request, locks: KeyedLocks, key: str) -> web.Response:
    owner = check_handle(request.query.get("owner"))
    written = await locks.release_hold(key, owner)
    return _json({"key": key, "released": True, "release_written": written})


async def get_lock(request: web.Request, locks: KeyedLocks, key: str) -> web.Response:
    owner = request.query.get("owner")
    return _json(locks.describe(key, check_handle(owner) if owner is not None else None))


def add_routes(app: web.Application, locks: KeyedLocks) -> None:
    app[LOCKS] = locks
    describe_locks(locks.max_ttl_s, KEY_PATTERN, MAX_WAIT_S)
    resource = app.router.add_resource(PATH)
    resource.add_route("POST", _guarded(post_lock))
    resource.add_route("PUT", _guarded(put_lock))
    resource.add_route("DELETE", _guarded(delete_lock))
    resource.add_route("GET", _guarded(get_lock))
