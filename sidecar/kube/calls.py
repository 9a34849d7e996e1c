"""One bounded Kubernetes API call with raw JSON, shared by the adapters beyond the Lease."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException


class ApiCallFailed(Exception):
    """Timeout, connection failure, or an HTTP status other than 2xx (`status`, None if no answer)."""

    def __init__(self, message: str, status: int | None = None, timed_out: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.timed_out = timed_out


async def call_json(what: str, timeout_s: float, method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """`method(*args, **kwargs)` of a kubernetes-asyncio API, bounded by `timeout_s` in total."""
    try:
        async with asyncio.timeout(timeout_s):
            response = await method(*args, _preload_content=False, _request_timeout=timeout_s, **kwargs)
            body = await response.read()
    except ApiException as error:
        raise ApiCallFailed(f"{what}: HTTP {error.status}: {error.reason}", error.status) from error
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        raise ApiCallFailed(f"{what}: {error!r}", timed_out=isinstance(error, TimeoutError)) from error
    if not 200 <= response.status <= 299:
        raise ApiCallFailed(f"{what}: HTTP {response.status}: {_message(body)}", response.status)
    try:
        return json.loads(body)
    except ValueError as error:
        raise ApiCallFailed(f"{what}: unreadable answer") from error


async def reconcile_on_wake(wake: asyncio.Event, reconcile: Callable[[], Awaitable[None]], retry_s: float,
                            log: logging.Logger, failed_message: str, failed_event: str) -> None:
    """Forever: wait for `wake`, run `reconcile`; a failed call is logged and retried after
    `retry_s` seconds (the adapters that follow the role: leader Service, pod label)."""
    while True:
        await wake.wait()
        wake.clear()
        try:
            await reconcile()
        except ApiCallFailed as error:
            log.error(failed_message, extra={"event": failed_event, "error": str(error)})
            await asyncio.sleep(retry_s)
            wake.set()


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", ""))[:300]
    except (ValueError, AttributeError):
        return body[:300].decode(errors="replace")
