"""The lock is dumb storage: get, create, compare-and-swap update, watch.

Every rule about expiry, hand-over and terms lives in `election.Elector`; a backend only stores
records and reports conflicts. `InMemoryLockBackend` is the reference the contract tests hold the
Kubernetes backend to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from sidecar.record import LeaseRecord


class LockError(Exception):
    """Base of everything a backend raises."""


class Conflict(LockError):
    """The write lost a race: the stored version differs, or the record already exists."""


class BackendUnavailable(LockError):
    """Timeout, connection failure, 5xx, 403: the outcome of a write is unknown."""


class WatchExpired(LockError):
    """The watch's starting version is too old (410 Gone); re-read and watch again."""


@dataclass(frozen=True)
class Versioned:
    """A record with the opaque version that a compare-and-swap update must carry."""

    record: LeaseRecord
    version: str


@dataclass(frozen=True)
class WatchEvent:
    current: Versioned | None
    """The stored record after the change; None when it was deleted."""


class DistributedLockBackend(Protocol):
    """Storage for one lock (a Lease's namespace/name). Every call is bounded by `timeout_s`."""

    key: str

    async def get(self, timeout_s: float) -> Versioned | None:
        """The current record, or None if it does not exist."""

    async def create(self, record: LeaseRecord, timeout_s: float) -> Versioned:
        """Store a new record; Conflict if one exists."""

    async def update(self, record: LeaseRecord, expected_version: str, timeout_s: float) -> Versioned:
        """Replace the record only if its version is still `expected_version`; else Conflict."""

    def watch(self, idle_timeout_s: float) -> AsyncIterator[WatchEvent]:
        """The current state first, then every change. Ends quietly after `idle_timeout_s`
        without news; raises LockError when the stream breaks."""


class InMemoryLockBackend:
    """A process-local backend for unit tests and the contract suite. Versions are counters."""

    def __init__(self, key: str = "default/test") -> None:
        self.key = key
        self._current: Versioned | None = None
        self._history: list[WatchEvent] = []
        self._changed = asyncio.Condition()
        self._counter = 0
        self.unavailable = False
        """Set to simulate an outage: every call raises BackendUnavailable."""

    def _check(self) -> None:
        if self.unavailable:
            raise BackendUnavailable("in-memory backend marked unavailable")

    async def _store(self, record: LeaseRecord | None) -> Versioned | None:
        self._counter += 1
        self._current = None if record is None else Versioned(record, str(self._counter))
        self._history.append(WatchEvent(self._current))
        async with self._changed:
            self._changed.notify_all()
        return self._current

    async def get(self, timeout_s: float) -> Versioned | None:
        self._check()
        return self._current

    async def create(self, record: LeaseRecord, timeout_s: float) -> Versioned:
        self._check()
        if self._current is not None:
            raise Conflict(f"{self.key} already exists")
        stored = await self._store(record)
        assert stored is not None
        return stored

    async def update(self, record: LeaseRecord, expected_version: str, timeout_s: float) -> Versioned:
        self._check()
        if self._current is None:
            raise Conflict(f"{self.key} does not exist")
        if self._current.version != expected_version:
            raise Conflict(f"{self.key} is at version {self._current.version}, not {expected_version}")
        stored = await self._store(record)
        assert stored is not None
        return stored

    async def delete(self) -> None:
        """Test hook: what `kubectl delete lease` does."""
        await self._store(None)

    async def watch(self, idle_timeout_s: float) -> AsyncIterator[WatchEvent]:
        self._check()
        seen = len(self._history)
        yield WatchEvent(self._current)
        while True:
            if seen < len(self._history):
                seen += 1
                yield self._history[seen - 1]
                continue
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), idle_timeout_s)
                except TimeoutError:
                    return
            self._check()
