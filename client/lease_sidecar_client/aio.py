"""The asyncio twin of `Sidecar`, on the standard library's asyncio streams (no aiohttp).

    sidecar = AsyncSidecar()
    async with sidecar.leading() as lead:      # waits for a term; cancels this task when it ends
        await do_the_work(lead.term.fencing_token)

The term is followed on the sidecar's event stream (`GET /leader/events`): `event: leader` when the
role or token changes, `event: renewal` when a renewal moves the deadline. A sidecar that does not
send renewals is asked `GET /leader` every `refresh_s` instead, so the deadline still moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ._blocking import (
    DEFAULT_URL,
    LONG_POLL_S,
    RETRY_S,
    call_info,
    heartbeat_body,
    leader_query,
    leads,
    sit_out_query,
    term_to_start_in,
)
from ._leading import DEADLINE, DRAINING, FollowingATerm
from ._term import Status, Term, TermEnded, bind_term

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class HttpError(Exception):
    pass


class AsyncSidecar:
    """The sidecar on localhost, asked from asyncio. Never raises for the sidecar's absence:
    an unreachable sidecar reads as "not leader" (None). Holds no connection between calls, so
    there is nothing to close (`close()` and `async with` exist for sidecar.client's LeaderClient)."""

    def __init__(self, base_url: str = DEFAULT_URL, request_timeout_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        parsed = urllib.parse.urlsplit(self.base_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"base_url: must be http://host[:port], not {base_url!r}")
        self._host = parsed.hostname
        self._port = parsed.port or 80
        self._prefix = parsed.path
        self.request_timeout_s = request_timeout_s

    async def __aenter__(self) -> AsyncSidecar:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Nothing to release: each request has its own connection (localhost, cheap)."""

    # ------------------------------------------------------------ HTTP/1.0 on asyncio streams

    async def _open(self, method: str, path: str, body: bytes | None) -> tuple[asyncio.StreamReader,
                                                                           asyncio.StreamWriter, int, dict[str, str]]:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        try:
            # HTTP/1.0: the server answers a stream without chunked encoding and closes at its end.
            head = (f"{method} {self._prefix}{path} HTTP/1.0\r\nHost: {self._host}:{self._port}\r\n"
                    f"Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body or b'')}\r\n\r\n")
            writer.write(head.encode("latin-1") + (body or b""))
            await writer.drain()
            status_line = (await reader.readline()).decode("latin-1").split()
            if len(status_line) < 2 or not status_line[1].isdigit():
                raise HttpError(f"bad status line {status_line!r}")
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode("latin-1").strip()):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            return reader, writer, int(status_line[1]), headers
        except BaseException:
            writer.close()
            raise

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                       timeout_s: float | None = None) -> Status | None:
        data = json.dumps(body).encode() if body is not None else None
        try:
            async with asyncio.timeout(self.request_timeout_s if timeout_s is None else timeout_s):
                reader, writer, status, headers = await self._open(method, path, data)
                try:
                    if "content-length" in headers:
                        payload = await reader.readexactly(int(headers["content-length"]))
                    else:
                        payload = await reader.read()
                finally:
                    writer.close()
            return json.loads(payload) if status == 200 else None
        except (OSError, ValueError, TimeoutError, HttpError, asyncio.IncompleteReadError):
            return None

    # ------------------------------------------------------------ the API

    async def status(self, wait_s: float = 0, since: int | None = None) -> Status | None:
        """The /leader JSON, or None if the sidecar could not be asked."""
        return await self._request("GET", leader_query(wait_s, since), timeout_s=self.request_timeout_s + wait_s)

    async def term(self) -> Term | None:
        asked_at = time.monotonic()
        return Term.from_status(await self.status(), asked_at_monotonic=asked_at)

    async def is_leader(self) -> bool:
        return leads(await self.status())

    async def heartbeat(self, schedule_count: int | None = None, next_due_task: str | None = None,
                        **info: Any) -> Status | None:
        """POST /heartbeat with the seed's `update_info` fields. Never raises."""
        return await self._request("POST", "/heartbeat", heartbeat_body(schedule_count, next_due_task, **info))

    async def resign(self, sit_out_s: float | None = None) -> Status | None:
        """POST /leader/resign: end this pod's term now. Never raises."""
        return await self._request("POST", "/leader/resign" + sit_out_query(sit_out_s))

    async def heartbeats(self, interval_s: float = 1.0,
                         info: Callable[[], dict[str, Any] | None] | None = None) -> None:
        """Heartbeat every `interval_s` until cancelled; run it from the task that does the work,
        so a hung app stops heartbeating."""
        while True:
            await self.heartbeat(**call_info(info))
            await asyncio.sleep(interval_s)

    async def changes(self, wait_s: float = LONG_POLL_S) -> AsyncIterator[Status]:
        """Yields the current status, then each change of `version` (long-poll)."""
        since: int | None = None
        while True:
            current = await self.status(wait_s if since is not None else 0, since)
            if current is None:
                await asyncio.sleep(RETRY_S)
                since = None
                continue
            if current.get("version") != since:
                since = current.get("version")
                yield current

    async def events(self) -> AsyncIterator[tuple[str, Status]]:
        """The event stream, `(event, status)` pairs (`leader`, `renewal`), until the connection
        ends (then it returns; the caller decides whether to reconnect)."""
        try:
            reader, writer, status, _headers = await asyncio.wait_for(
                self._open("GET", "/leader/events", None), self.request_timeout_s)
        except (OSError, TimeoutError, HttpError):
            return
        try:
            if status != 200:
                return
            event, data = "message", []
            while line := await reader.readline():
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if not text:
                    if data:
                        try:
                            yield event, json.loads("\n".join(data))
                        except ValueError:
                            pass
                    event, data = "message", []
                elif text.startswith(":"):
                    continue  # keep-alive comment
                else:
                    name, _, value = text.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
        finally:
            writer.close()

    async def wait_until_leader(self, timeout_s: float | None = None) -> Status:
        """The status once this pod leads; TimeoutError after `timeout_s`."""

        async def first_leading() -> Status:
            async for current in self.changes():
                if current.get("is_leader"):
                    return current
            raise AssertionError("unreachable")

        return await asyncio.wait_for(first_leading(), timeout_s)

    async def wait_for_term(self, timeout_s: float | None = None) -> Term:
        """A term with time left, not draining; TimeoutError after `timeout_s`."""

        async def first_term() -> Term:
            since: int | None = None
            while True:
                asked_at = time.monotonic()
                current = await self.status(LONG_POLL_S if since is not None else 0, since)
                if current is None:
                    await asyncio.sleep(RETRY_S)
                    since = None
                    continue
                term = term_to_start_in(current, asked_at if since is None else None)
                if term is not None:
                    return term
                since = current.get("version")

        return await asyncio.wait_for(first_term(), timeout_s)

    def leading(self, wait_timeout_s: float | None = None, refresh_s: float = 1.0,
                resign_on_exit: bool = False, sit_out_s: float = 0) -> AsyncLeading:
        return AsyncLeading(self, wait_timeout_s, refresh_s, resign_on_exit, sit_out_s)


class AsyncLeading(FollowingATerm):
    """`async with sidecar.leading() as lead:` / `@sidecar.leading()`: waits for a term, runs the
    block in it, and when the term ends (deadline on the monotonic clock, standby or another token,
    draining requested) cancels the task that entered the block; the cancellation leaves the block
    as TermEnded (like asyncio.timeout turns its own into TimeoutError). On leaving, a drained term
    (or any, with `resign_on_exit`) is resigned so a waiting hand-over goes on at once."""

    def __init__(self, sidecar: AsyncSidecar, wait_timeout_s: float | None = None, refresh_s: float = 1.0,
                 resign_on_exit: bool = False, sit_out_s: float = 0) -> None:
        self.sidecar = sidecar
        self.wait_timeout_s = wait_timeout_s
        self.refresh_s = refresh_s
        self.resign_on_exit = resign_on_exit
        self.sit_out_s = sit_out_s
        self.ended = asyncio.Event()
        self.reason: str | None = None
        self.draining = False
        self._term: Term | None = None
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._cancelled_by_us = False
        self._bound: Any = None

    async def __aenter__(self) -> AsyncLeading:
        self._task = asyncio.current_task()
        self._term = await self.sidecar.wait_for_term(self.wait_timeout_s)
        self._watcher = asyncio.create_task(self._watch(), name="lease-sidecar-term-watcher")
        self._bound = bind_term(self.current)
        self._bound.__enter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> bool:
        if self._bound is not None:
            self._bound.__exit__(None, None, None)
            self._bound = None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self.draining or self.resign_on_exit:
            await self.sidecar.resign(self.sit_out_s)
        if self._cancelled_by_us and self._task is not None and self._task.uncancel() == 0 \
                and exc_type is asyncio.CancelledError:
            raise TermEnded(self.reason) from exc
        return False

    def __call__(self, function: F) -> F:
        @functools.wraps(function)
        async def in_a_term(*args: Any, **kwargs: Any) -> Any:
            async with AsyncLeading(self.sidecar, self.wait_timeout_s, self.refresh_s, self.resign_on_exit,
                                    self.sit_out_s):
                return await function(*args, **kwargs)

        return in_a_term  # type: ignore[return-value]

    def _end(self, reason: str) -> None:
        if not self._record_end(reason):
            return
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._cancelled_by_us = True
            self._task.cancel(f"lease-sidecar term ended: {reason}")

    async def _watch(self) -> None:
        """Follows the event stream; refreshes by `GET /leader` when no event came for
        `refresh_s`; ends the term at its deadline whatever the sidecar says (or fails to)."""
        updates: asyncio.Queue[Status] = asyncio.Queue()

        async def follow_stream() -> None:
            while True:
                async for _event, current in self.sidecar.events():
                    updates.put_nowait(current)
                await asyncio.sleep(RETRY_S)

        stream = asyncio.create_task(follow_stream())
        try:
            while not self.ended.is_set() or self.reason == DRAINING:
                left = self.term.remaining_s()
                if left <= 0:
                    self._end(DEADLINE)
                    return
                try:
                    async with asyncio.timeout(min(self.refresh_s, left)):
                        current = await updates.get()
                    asked_at = None
                except TimeoutError:
                    if self.term.remaining_s() <= 0:
                        continue
                    asked_at = time.monotonic()
                    current = await self.sidecar.status()
                    if current is None:
                        continue
                self.observe(current, asked_at)
        finally:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream


# sidecar.client's asyncio name: same methods, stdlib streams instead of aiohttp.
LeaderClient = AsyncSidecar
