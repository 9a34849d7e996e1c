"""The lock is dumb storage: get, create, compare-and-swap update, watch.

Every rule about expiry, hand-over and terms lives in `election.Elector`; a backend only stores
records and reports conflicts. `memory_lock.InMemoryLockBackend` is the reference the contract
tests hold the Kubernetes backend to; `kube_lock.LeaseLockBackend` is the real one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from sidecar.core.record import LeaseRecord


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

    def watch(self, idle_timeout_s: float, request_timeout_s: float) -> AsyncIterator[WatchEvent]:
        """The current state first (one read, bounded by `request_timeout_s`), then every change.
        May end quietly (the caller watches again); raises LockError when the stream breaks, and
        WatchExpired when it cannot be resumed."""
