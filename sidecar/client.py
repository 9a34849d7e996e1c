"""Client helpers for the main container: ask the sidecar on localhost whether this pod leads.

Fail safe: any error (sidecar down, timeout, garbage) reads as "not leader". Two flavours:

    from sidecar.client import LeaderClient          # asyncio (aiohttp)
    async with LeaderClient() as leader:
        status = await leader.wait_until_leader()
        async for status in leader.changes(): ...

    from sidecar import client                       # blocking, stdlib only
    if client.is_leader(): ...
    for status in client.changes(): ...

Self-fencing: a leader should stop its singleton work at `status["valid_until"]` unless a newer
status arrives first, and pass `status["fencing_token"]` to storage that can reject stale writers.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

DEFAULT_URL = "http://127.0.0.1:4040"
LONG_POLL_S = 30.0
"""How long one long-poll request waits for a change before asking again."""
RETRY_S = 1.0

Status = dict[str, Any]


class LeaderClient:
    """asyncio client. Reuses one aiohttp session; close it with `async with` or `close()`."""

    def __init__(self, base_url: str = DEFAULT_URL, request_timeout_s: float = 2.0) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.base_url = base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LeaderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def status(self, wait_s: float = 0, since: int | None = None) -> Status | None:
        """The /leader JSON, or None if the sidecar could not be asked."""
        if self._session is None:
            self._session = self._aiohttp.ClientSession()
        params = {"wait": str(wait_s)} if wait_s else {}
        if since is not None:
            params["since"] = str(since)
        timeout = self._aiohttp.ClientTimeout(total=self.request_timeout_s + wait_s)
        try:
            async with self._session.get(f"{self.base_url}/leader", params=params, timeout=timeout) as resp:
                if resp.status != 200:
                    return None
                return await resp.json()
        except (self._aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def is_leader(self) -> bool:
        status = await self.status()
        return bool(status and status.get("is_leader") is True)

    async def changes(self, wait_s: float = LONG_POLL_S) -> AsyncIterator[Status]:
        """Yields the current status, then each change (long-poll; no busy polling)."""
        import asyncio

        since: int | None = None
        while True:
            status = await self.status(wait_s if since is not None else 0, since)
            if status is None:
                await asyncio.sleep(RETRY_S)
                since = None
                continue
            if status["version"] != since:
                since = status["version"]
                yield status

    async def wait_until_leader(self, timeout_s: float | None = None) -> Status:
        """Returns the status once this pod leads; TimeoutError after `timeout_s`."""
        import asyncio

        async def first_leading() -> Status:
            async for status in self.changes():
                if status["is_leader"]:
                    return status
            raise AssertionError("unreachable")

        return await asyncio.wait_for(first_leading(), timeout_s)


# ---------------------------------------------------------------- blocking, stdlib only


def status(base_url: str = DEFAULT_URL, wait_s: float = 0, since: int | None = None,
           request_timeout_s: float = 2.0) -> Status | None:
    query = f"?wait={wait_s}" + (f"&since={since}" if since is not None else "") if wait_s else ""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/leader{query}",
                                    timeout=request_timeout_s + wait_s) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def is_leader(base_url: str = DEFAULT_URL) -> bool:
    current = status(base_url)
    return bool(current and current.get("is_leader") is True)


def changes(base_url: str = DEFAULT_URL, wait_s: float = LONG_POLL_S) -> Iterator[Status]:
    since: int | None = None
    while True:
        current = status(base_url, wait_s if since is not None else 0, since)
        if current is None:
            time.sleep(RETRY_S)
            since = None
            continue
        if current["version"] != since:
            since = current["version"]
            yield current


def wait_until_leader(base_url: str = DEFAULT_URL, timeout_s: float | None = None) -> Status:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for current in changes(base_url, wait_s=min(LONG_POLL_S, timeout_s or LONG_POLL_S)):
        if current["is_leader"]:
            return current
        if deadline is not None and time.monotonic() >= deadline:
            break
    raise TimeoutError(f"not leader within {timeout_s}s")
