"""Two interfaces: `LeaseStore`, dumb storage for one Lease (get, create, compare-and-swap update,
watch), and `DistributedLockBackend`, the seed's keyed lock (try_acquire / renew / release /
is_locked) that apps use for keys of their own.

Every rule about expiry, hand-over and terms lives in `election.Elector`; a store only keeps
records and reports conflicts. `memory_lock.InMemoryLockBackend` is the reference the contract
tests hold the Kubernetes store to; `lease_lock.LeaseLockBackend` is the real one. The keyed
interface is implemented by `engine.keyed_locks.KeyedLocks`, one Elector-rule state machine per key
over one `LeaseStore` per key.
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


class LeaseStore(Protocol):
    """Storage for one lock (a Lease's namespace/name). Every call is bounded by `timeout_s`."""

    key: str
    absent_version: str | None
    """Set whenever `get` or `watch` reports the record absent: a version of the store taken at
    or after the absence (the deletion's, or a list's that showed it absent); None if unknown.
    A creation's fencing token is raised above it (election.py, L2)."""

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


@dataclass(frozen=True)
class KeyHold:
    """What an owner holds after try_acquire or renew succeeded."""

    key: str
    owner: str
    fencing_token: int
    lease: str
    """"namespace/name" of the Lease that stores the key: the scope for `lease_fence`."""
    valid_until_monotonic: float
    """CLOCK_MONOTONIC seconds at which the hold may end unless renewed."""


class DistributedLockBackend(Protocol):
    """The seed's keyed lock: any number of keys, each held by at most one owner at a time."""

    async def try_acquire(self, key: str, owner: str, ttl_s: float) -> KeyHold | None:
        """Take `key` for `owner` for `ttl_s` seconds; None when someone else holds it."""

    async def renew(self, key: str, owner: str, ttl_s: float) -> KeyHold | None:
        """Extend `owner`'s hold by `ttl_s` from now; None once the hold is lost."""

    async def release(self, key: str, owner: str) -> bool:
        """Give `key` up; False when `owner` did not hold it (any more)."""

    async def is_locked(self, key: str) -> bool:
        """Whether anyone holds `key` now, as far as this process has observed."""
