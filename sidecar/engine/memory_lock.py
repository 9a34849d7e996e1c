"""A process-local `LeaseStore`: the reference for the contract tests and unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sidecar.core.lock import BackendUnavailable, Conflict, Versioned, WatchEvent
from sidecar.core.record import LeaseRecord


class InMemoryLockBackend:
    """A process-local backend for unit tests and the contract suite. Versions are counters."""

    def __init__(self, key: str = "default/test") -> None:
        self.key = key
        self._current: Versioned | None = None
        self._history: list[WatchEvent] = []
        self._changed = asyncio.Condition()
        self._counter = 0
        self.absent_version: str | None = None
        self.unavailable = False
        """Set to simulate an outage: every call raises BackendUnavailable."""

    def _check(self) -> None:
        if self.unavailable:
            raise BackendUnavailable("in-memory backend marked unavailable")

    async def _store(self, record: LeaseRecord) -> Versioned:
        self._counter += 1
        stored = Versioned(record, str(self._counter))
        await self._announce(stored)
        return stored

    async def _announce(self, current: Versioned | None) -> None:
        """Make `current` (None: deleted) the record and wake the watchers."""
        self._current = current
        self._history.append(WatchEvent(current))
        async with self._changed:
            self._changed.notify_all()

    async def get(self, timeout_s: float) -> Versioned | None:
        self._check()
        self._note_absence(self._current)
        return self._current

    def _note_absence(self, current: Versioned | None) -> None:
        if current is None:
            self.absent_version = str(self._counter)  # every version so far precedes this absence

    async def create(self, record: LeaseRecord, timeout_s: float) -> Versioned:
        self._check()
        if self._current is not None:
            raise Conflict(f"{self.key} already exists")
        return await self._store(record)

    async def update(self, record: LeaseRecord, expected_version: str, timeout_s: float) -> Versioned:
        self._check()
        if self._current is None:
            raise Conflict(f"{self.key} does not exist")
        if self._current.version != expected_version:
            raise Conflict(f"{self.key} is at version {self._current.version}, not {expected_version}")
        return await self._store(record)

    async def delete(self) -> None:
        """Test hook: what `kubectl delete lease` does."""
        self._counter += 1
        await self._announce(None)

    async def watch(self, idle_timeout_s: float, request_timeout_s: float = 5.0) -> AsyncIterator[WatchEvent]:
        self._check()
        seen = len(self._history)
        self._note_absence(self._current)
        yield WatchEvent(self._current)
        while True:
            if seen < len(self._history):
                seen += 1
                self._note_absence(self._history[seen - 1].current)
                yield self._history[seen - 1]
                continue
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), idle_timeout_s)
                except TimeoutError:
                    return
            self._check()
