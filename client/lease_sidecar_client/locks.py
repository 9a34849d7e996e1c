"""Keyed locks through the sidecar (`--locks`): the seed's try_acquire / renew / release /
is_locked, and `holding()`, a context manager and decorator (blocking and asyncio) that acquires,
renews, hands the lock to the work, tells the work when the lock is lost, and releases.

    from lease_sidecar_client.locks import Locks

    with Locks().holding("tenant-42/migrate", ttl_s=15, wait_s=30) as held:
        for step in steps:
            held.check()                                   # LockLost once it is gone
            run(step, token=held.lock.fencing_token)       # or fence(conn, held.lock.term)

    @AsyncLocks().holding("reports/daily")                 # asyncio: the work is cancelled on loss
    async def report() -> None: ...

A lock's `lease` ("namespace/name") is the scope of the storage fences: `lease_fence(lock.lease,
lock.fencing_token)` in PostgreSQL (`psycopg.fence(conn, held.lock.term)` does exactly that). While
the work runs, `current_term()` is the lock's `Term`. The sidecar renews the Lease itself; `holding`
renews the owner's claim (PUT) every third of the ttl, and the lock stays valid until
`valid_until_monotonic` (this process's `time.monotonic()`: the pod's clock) whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ._blocking import DEFAULT_URL
from ._term import Flag, Term, TermEnded, bind_term

F = TypeVar("F", bound=Callable[..., Any])


class LockLost(TermEnded):
    """The lock ended before the work released it: the owner's renewal was refused, or its
    deadline passed. Work done after this must be refused by the storage fence."""


class LockBusy(Exception):
    """The lock is held by another owner (or not free yet), or the pod's limits refused (429)."""

    def __init__(self, key: str, status: int, body: dict[str, Any], retry_after_s: float | None) -> None:
        super().__init__(f"{key}: {body.get('error', status)}")
        self.key = key
        self.status = status
        self.holder = body.get("holder")
        self.retry_after_s = retry_after_s


class LockRequestError(Exception):
    """The sidecar refused the request itself (400: a bad key, ttl, wait or handle) or is unreachable."""


@dataclass(frozen=True)
class Lock:
    key: str
    owner: str
    """The handle the sidecar gave this acquisition: renew and release name it."""
    lease: str
    fencing_token: int
    valid_until_monotonic: float

    @property
    def term(self) -> Term:
        """The lock as a `Term` (identity = the owner handle, scope = the lock's Lease), for the fences."""
        return Term(identity=self.owner, lease=self.lease, fencing_token=self.fencing_token,
                    valid_until_monotonic=self.valid_until_monotonic)

    def remaining_s(self, now: float | None = None) -> float:
        return max(0.0, self.valid_until_monotonic - (time.monotonic() if now is None else now))

    def is_valid(self, now: float | None = None) -> bool:
        return self.valid_until_monotonic > (time.monotonic() if now is None else now)

    def capped_by_the_wait(self, body: dict[str, Any]) -> bool:
        """Whether the any-clock bound (question + time left at the answer) left this lock less
        than half of the time the sidecar gave it: after a long `wait` it can be spent on
        arrival, and one renewal (a local request, no API write) gives a bound counted from a
        fresh question."""
        return self.remaining_s() < float(body.get("valid_for_seconds", 0.0)) / 2

    @classmethod
    def from_answer(cls, body: dict[str, Any], asked_at: float) -> Lock:
        until = float(body["valid_until_monotonic"])
        # Never later than the question plus what was left at the answer (holds on any clock).
        until = min(until, asked_at + float(body.get("valid_for_seconds", until - asked_at)))
        return cls(str(body["key"]), str(body["owner"]), str(body["lease"]), int(body["fencing_token"]), until)


def lock_path(key: str, **query: Any) -> str:
    given = {name: value for name, value in query.items() if value is not None}
    return "/locks/" + urllib.parse.quote(key, safe="/") + ("?" + urllib.parse.urlencode(given) if given else "")


def _duration(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds:g}s"


def _answer(key: str, status: int, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    if status == 200 and isinstance(body, dict):
        return body
    body = body if isinstance(body, dict) else {}
    if status in (409, 429):
        retry = headers.get("retry-after")
        raise LockBusy(key, status, body, float(body.get("retry_after_seconds") or retry or 1))
    raise LockRequestError(f"{key}: HTTP {status}: {body.get('error', '')}")


# ---------------------------------------------------------------- shared by the blocking and asyncio clients


def _acquire_path(key: str, ttl_s: float | None, wait_s: float | None) -> str:
    return lock_path(key, ttl=_duration(ttl_s), wait=_duration(wait_s))


def _owner_path(lock: Lock) -> str:
    return lock_path(lock.key, owner=lock.owner)


@contextlib.contextmanager
def _busy_as_lost() -> Iterator[None]:
    """A renewal the sidecar refuses (held by another owner now) means the lock is lost."""
    try:
        yield
    except LockBusy as busy:
        raise LockLost(str(busy)) from None


def _released(body: dict[str, Any]) -> bool:
    return bool(body.get("released"))


def _locked(body: dict[str, Any]) -> bool:
    return bool(body["locked"])


def _renewal_wait_s(lock: Lock, ttl_s: float | None) -> float:
    """How long to wait before renewing: a third of the ttl (or of the lock's time left, taken as
    two thirds of it), at least 0.2 s, and never past the deadline less 50 ms."""
    interval = max(0.2, (ttl_s or lock.remaining_s() * 1.5) / 3)
    return min(interval, max(0.0, lock.remaining_s() - 0.05))


class _HoldingALock:
    """What `Holding` and `AsyncHolding` share, no I/O: the lock, `check()`, and how a loss is
    recorded once (`_record_loss`). Each says how the work is told (`_lose`)."""

    lost: Flag
    reason: str | None
    on_lost: Callable[[str], None] | None
    _lock: Lock | None

    @property
    def lock(self) -> Lock:
        if self._lock is None:
            raise RuntimeError("holding() not entered")
        return self._lock

    def check(self) -> Lock:
        lock = self.lock
        if not self.lost.is_set() and not lock.is_valid():
            self._lose("deadline reached")
        if self.lost.is_set():
            raise LockLost(self.reason)
        return lock

    def _lose(self, reason: str) -> None:
        raise NotImplementedError

    def _record_loss(self, reason: str) -> bool:
        """Records why the lock was lost and calls `on_lost`, once; True for the call that did."""
        if self.lost.is_set():
            return False
        self.reason = reason
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost(reason)
        return True


# ---------------------------------------------------------------- blocking


class Locks:
    """Blocking client of /locks (stdlib urllib)."""

    def __init__(self, base_url: str = DEFAULT_URL, request_timeout_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s

    def _call(self, method: str, key: str, path: str, timeout_s: float | None = None) -> dict[str, Any]:
        request = urllib.request.Request(self.base_url + path, method=method,
                                         data=b"" if method in ("POST", "PUT") else None)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.request_timeout_s) as response:
                return _answer(key, response.status, json.loads(response.read()), {})
        except urllib.error.HTTPError as error:
            try:
                body = json.loads(error.read() or b"null")
            except ValueError:
                body = None
            return _answer(key, error.code, body, {k.lower(): v for k, v in error.headers.items()})
        except (OSError, ValueError) as error:
            raise LockRequestError(f"{key}: {error}") from error

    def acquire(self, key: str, ttl_s: float | None = None, wait_s: float | None = None) -> Lock:
        """The lock, or LockBusy (held elsewhere, or the wait ran out)."""
        asked = time.monotonic()
        body = self._call("POST", key, _acquire_path(key, ttl_s, wait_s), self.request_timeout_s + (wait_s or 0))
        lock = Lock.from_answer(body, asked)
        if not (wait_s and lock.capped_by_the_wait(body)):
            return lock
        try:
            return self.renew(lock)
        except (LockLost, LockRequestError):
            return lock  # granted all the same: its own bound is safe, and the holder's renewals go on

    def try_acquire(self, key: str, ttl_s: float | None = None) -> Lock | None:
        """The seed's try_acquire: the lock, or None when someone else holds it."""
        try:
            return self.acquire(key, ttl_s)
        except LockBusy:
            return None

    def renew(self, lock: Lock) -> Lock:
        """The same lock with a later deadline, or LockLost."""
        asked = time.monotonic()
        with _busy_as_lost():
            return Lock.from_answer(self._call("PUT", lock.key, _owner_path(lock)), asked)

    def release(self, lock: Lock) -> bool:
        """False if it was no longer held (lost before)."""
        try:
            return _released(self._call("DELETE", lock.key, _owner_path(lock)))
        except LockBusy:
            return False

    def is_locked(self, key: str) -> bool:
        return _locked(self._call("GET", key, lock_path(key)))

    def holding(self, key: str, ttl_s: float | None = None, wait_s: float | None = None,
                on_lost: Callable[[str], None] | None = None) -> Holding:
        return Holding(self, key, ttl_s, wait_s, on_lost)


class Holding(_HoldingALock):
    """Context manager and decorator: acquire, renew every third of the ttl in a thread, release.
    Blocking work cannot be interrupted from outside, so it looks: `check()` between steps (raises
    LockLost), or `lost.wait(...)` as its sleep; `on_lost(reason)` is called from the renewer."""

    def __init__(self, locks: Locks, key: str, ttl_s: float | None, wait_s: float | None,
                 on_lost: Callable[[str], None] | None) -> None:
        self.locks, self.key, self.ttl_s, self.wait_s, self.on_lost = locks, key, ttl_s, wait_s, on_lost
        self.lost = threading.Event()
        self.reason: str | None = None
        self._lock: Lock | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._bound: Any = None

    def _lose(self, reason: str) -> None:
        self._record_loss(reason)

    def _renew_forever(self) -> None:
        while not self._stop.is_set():
            lock = self.lock
            if self._stop.wait(_renewal_wait_s(lock, self.ttl_s)):
                return
            if not lock.is_valid():
                self._lose("deadline reached")
                return
            try:
                self._lock = self.locks.renew(lock)
            except LockLost as lost:
                self._lose(str(lost))
                return
            except LockRequestError:
                continue  # the sidecar did not answer: the deadline still bounds the lock

    def __enter__(self) -> Holding:
        self._lock = self.locks.acquire(self.key, self.ttl_s, self.wait_s)
        self._bound = bind_term(lambda: self._lock.term if self._lock is not None else None)
        self._bound.__enter__()
        self._renewer = threading.Thread(target=self._renew_forever, name=f"lock {self.key}", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(self.locks.request_timeout_s + 1)
        if self._bound is not None:
            self._bound.__exit__(*exc)
        if not self.lost.is_set():
            self.locks.release(self.lock)

    def __call__(self, function: F) -> F:
        @functools.wraps(function)
        def under_lock(*args: Any, **kwargs: Any) -> Any:
            with Holding(self.locks, self.key, self.ttl_s, self.wait_s, self.on_lost):
                return function(*args, **kwargs)
        return under_lock  # type: ignore[return-value]


# ---------------------------------------------------------------- asyncio


class AsyncLocks:
    """asyncio client of /locks (stdlib streams, HTTP/1.0: one connection per request)."""

    def __init__(self, base_url: str = DEFAULT_URL, request_timeout_s: float = 2.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 80
        self._prefix = parsed.path.rstrip("/")
        self.request_timeout_s = request_timeout_s

    async def _call(self, method: str, key: str, path: str, timeout_s: float | None = None) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout_s or self.request_timeout_s):
                reader, writer = await asyncio.open_connection(self._host, self._port)
                try:
                    writer.write((f"{method} {self._prefix}{path} HTTP/1.0\r\nHost: {self._host}:{self._port}\r\n"
                                  f"Content-Length: 0\r\n\r\n").encode("latin-1"))
                    await writer.drain()
                    raw = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as error:
            raise LockRequestError(f"{key}: {error!r}") from error
        head, _, payload = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise LockRequestError(f"{key}: bad answer {lines[0][:60]!r}")
        pairs = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in pairs}
        try:
            body = json.loads(payload or b"null")
        except ValueError:
            body = None
        return _answer(key, int(parts[1]), body, headers)

    async def acquire(self, key: str, ttl_s: float | None = None, wait_s: float | None = None) -> Lock:
        asked = time.monotonic()
        body = await self._call("POST", key, _acquire_path(key, ttl_s, wait_s), self.request_timeout_s + (wait_s or 0))
        lock = Lock.from_answer(body, asked)
        if not (wait_s and lock.capped_by_the_wait(body)):
            return lock
        try:
            return await self.renew(lock)
        except (LockLost, LockRequestError):
            return lock  # granted all the same: its own bound is safe, and the holder's renewals go on

    async def try_acquire(self, key: str, ttl_s: float | None = None) -> Lock | None:
        try:
            return await self.acquire(key, ttl_s)
        except LockBusy:
            return None

    async def renew(self, lock: Lock) -> Lock:
        asked = time.monotonic()
        with _busy_as_lost():
            return Lock.from_answer(await self._call("PUT", lock.key, _owner_path(lock)), asked)

    async def release(self, lock: Lock) -> bool:
        try:
            return _released(await self._call("DELETE", lock.key, _owner_path(lock)))
        except LockBusy:
            return False

    async def is_locked(self, key: str) -> bool:
        return _locked(await self._call("GET", key, lock_path(key)))

    def holding(self, key: str, ttl_s: float | None = None, wait_s: float | None = None,
                on_lost: Callable[[str], None] | None = None) -> AsyncHolding:
        return AsyncHolding(self, key, ttl_s, wait_s, on_lost)


class AsyncHolding(_HoldingALock):
    """Async context manager and decorator: acquire, renew in a task, release. When the lock is
    lost the task that entered the block is cancelled, and the block ends with LockLost."""

    def __init__(self, locks: AsyncLocks, key: str, ttl_s: float | None, wait_s: float | None,
                 on_lost: Callable[[str], None] | None) -> None:
        self.locks, self.key, self.ttl_s, self.wait_s, self.on_lost = locks, key, ttl_s, wait_s, on_lost
        self.lost = asyncio.Event()
        self.reason: str | None = None
        self._lock: Lock | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[Any] | None = None
        self._cancelled_work = False
        self._bound: Any = None

    def _lose(self, reason: str) -> None:
        if not self._record_loss(reason):
            return
        if self._worker is not None and self._worker is not asyncio.current_task():
            self._cancelled_work = True
            self._worker.cancel()

    async def _renew_forever(self) -> None:
        while True:
            lock = self.lock
            await asyncio.sleep(_renewal_wait_s(lock, self.ttl_s))
            if not lock.is_valid():
                self._lose("deadline reached")
                return
            try:
                self._lock = await self.locks.renew(lock)
            except LockLost as lost:
                self._lose(str(lost))
                return
            except LockRequestError:
                continue

    async def __aenter__(self) -> AsyncHolding:
        self._lock = await self.locks.acquire(self.key, self.ttl_s, self.wait_s)
        self._worker = asyncio.current_task()
        self._bound = bind_term(lambda: self._lock.term if self._lock is not None else None)
        self._bound.__enter__()
        self._renewer = asyncio.create_task(self._renew_forever(), name=f"lock {self.key}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: object) -> bool:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        if self._bound is not None:
            self._bound.__exit__(exc_type, exc, traceback)
        if not self.lost.is_set():
            await self.locks.release(self.lock)
        if self._cancelled_work and exc_type is asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise LockLost(self.reason)
        return False

    def __call__(self, function: F) -> F:
        @functools.wraps(function)
        async def under_lock(*args: Any, **kwargs: Any) -> Any:
            async with AsyncHolding(self.locks, self.key, self.ttl_s, self.wait_s, self.on_lost):
                return await function(*args, **kwargs)
        return under_lock  # type: ignore[return-value]
