"""Client helpers for the main container: ask the sidecar on localhost whether this pod leads.

Fail safe: any error (sidecar down, timeout, garbage) reads as "not leader". Two flavours:

    from sidecar.client import LeaderClient          # asyncio (aiohttp)
    async with LeaderClient() as leader:
        status = await leader.wait_until_leader()
        async for status in leader.changes(): ...

    from sidecar import client                       # blocking, stdlib only
    if client.is_leader(): ...
    for status in client.changes(): ...

    client.heartbeat(schedule_count=12, next_due_task="cleanup")   # the app is alive (never raises)
    client.resign()                                   # give leadership up now, e.g. on SIGTERM

Self-fencing: a leader should stop its singleton work at `status["valid_until_monotonic"]` (the
node's CLOCK_MONOTONIC, which `time.monotonic()` reads in any container of the pod; `valid_until`
is the same moment on the wall clock, for people, and moves when that clock is stepped) unless a
newer status arrives first, and pass `status["fencing_token"]` to storage that can reject stale
writers. `remaining_s(status)` and `still_valid(status)` do the arithmetic. Renewals move the
deadline without a new `version`: `changes()` yields on version changes only, so a long-poller
refreshes the deadline with `status()` (no wait) every renewal interval, and an event stream gets
`event: renewal` for each.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
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

    async def heartbeat(self, schedule_count: int | None = None, next_due_task: str | None = None,
                        detail: dict[str, Any] | None = None) -> Status | None:
        """POST /heartbeat: this app is alive (and what it is doing). Never raises: returns the
        /leader JSON, or None if the sidecar could not be told."""
        return await self._post("/heartbeat", _heartbeat_body(schedule_count, next_due_task, detail))

    async def resign(self, sit_out_s: float | None = None) -> Status | None:
        """POST /leader/resign: give leadership up now (e.g. first thing in a SIGTERM handler).
        Never raises: the /leader JSON (standby), or None if the sidecar could not be told."""
        return await self._post("/leader/resign" + _sit_out_query(sit_out_s), None)

    async def heartbeats(self, interval_s: float = 1.0,
                         info: Callable[[], dict[str, Any] | None] | None = None) -> None:
        """Heartbeat every `interval_s` until cancelled: `asyncio.create_task(leader.heartbeats())`.
        `info()` (optional) returns the keyword arguments of `heartbeat` for each beat. Run it
        from the task that does the work, so a hung app stops heartbeating."""
        import asyncio

        while True:
            await self.heartbeat(**(_call_info(info)))
            await asyncio.sleep(interval_s)

    async def _post(self, path: str, body: dict[str, Any] | None) -> Status | None:
        if self._session is None:
            self._session = self._aiohttp.ClientSession()
        timeout = self._aiohttp.ClientTimeout(total=self.request_timeout_s)
        try:
            async with self._session.post(f"{self.base_url}{path}", json=body, timeout=timeout) as resp:
                if resp.status != 200:
                    return None
                return await resp.json()
        except (self._aiohttp.ClientError, TimeoutError, ValueError):
            return None

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


# ---------------------------------------------------------------- the deadline


def remaining_s(current: Status | None, now_monotonic: float | None = None) -> float:
    """Seconds this leader may still do leader work by `current` (0 unless leader), judged by
    `valid_until_monotonic` on this pod's monotonic clock; a sidecar too old to send it falls back
    to nothing (0), the safe side."""
    if not current or current.get("is_leader") is not True:
        return 0.0
    deadline = current.get("valid_until_monotonic")
    if not isinstance(deadline, int | float):
        return 0.0
    return max(0.0, float(deadline) - (time.monotonic() if now_monotonic is None else now_monotonic))


def still_valid(current: Status | None, now_monotonic: float | None = None) -> bool:
    """Leader, and its deadline not yet passed."""
    return remaining_s(current, now_monotonic) > 0


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


def heartbeat(base_url: str = DEFAULT_URL, schedule_count: int | None = None, next_due_task: str | None = None,
              detail: dict[str, Any] | None = None, request_timeout_s: float = 2.0) -> Status | None:
    """POST /heartbeat. Never raises: the /leader JSON, or None if the sidecar could not be told."""
    return _post(base_url, "/heartbeat", _heartbeat_body(schedule_count, next_due_task, detail), request_timeout_s)


def resign(base_url: str = DEFAULT_URL, sit_out_s: float | None = None,
           request_timeout_s: float = 2.0) -> Status | None:
    """POST /leader/resign. Never raises: the /leader JSON (standby), or None."""
    return _post(base_url, "/leader/resign" + _sit_out_query(sit_out_s), None, request_timeout_s)


class Heartbeats:
    """The background form: a daemon thread that heartbeats every `interval_s` until `stop()`.

        beats = client.Heartbeats(info=lambda: {"schedule_count": len(jobs)}).start()
        ...
        beats.stop()

    A thread beats even while the app's own work is stuck; if that matters, call `heartbeat()`
    from the work loop itself instead (or have `info` raise when the work is stuck: a beat is
    skipped whenever `info` raises).
    """

    def __init__(self, base_url: str = DEFAULT_URL, interval_s: float = 1.0,
                 info: Callable[[], dict[str, Any] | None] | None = None) -> None:
        import threading

        self.base_url = base_url
        self.interval_s = interval_s
        self.info = info
        self.last: Status | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-sidecar-heartbeats", daemon=True)

    def start(self) -> Heartbeats:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.last = heartbeat(self.base_url, **_call_info(self.info))
            except Exception:  # the app's info hook failed: skip this beat, never the thread
                self.last = None
            self._stopped.wait(self.interval_s)


def _call_info(info: Callable[[], dict[str, Any] | None] | None) -> dict[str, Any]:
    return dict(info() or {}) if info is not None else {}


def _heartbeat_body(schedule_count: int | None, next_due_task: str | None,
                    detail: dict[str, Any] | None) -> dict[str, Any] | None:
    body: dict[str, Any] = {}
    if schedule_count is not None:
        body["schedule_count"] = schedule_count
    if next_due_task is not None:
        body["next_due_task"] = next_due_task
    if detail is not None:
        body["detail"] = detail
    return body or None


def _sit_out_query(sit_out_s: float | None) -> str:
    return "" if sit_out_s is None else f"?sit_out={sit_out_s:g}"


def _post(base_url: str, path: str, body: dict[str, Any] | None, request_timeout_s: float) -> Status | None:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(f"{base_url.rstrip('/')}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=request_timeout_s) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
