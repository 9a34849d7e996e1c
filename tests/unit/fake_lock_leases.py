"""An in-memory stand-in for kube/lock_leases.LockLeases: the lock Leases of one election as the
apiserver keeps them (one revision counter for all, a history for watches), with switches to
break the watch, for driving engine/keyed_locks.KeyedLocks on a fake clock."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from typing import Any

from sidecar.core.keyed_locks import KEY_ANNOTATION, LockEvent, lease_name_for
from sidecar.core.lock import BackendUnavailable, Conflict, Versioned, WatchEvent, WatchExpired
from sidecar.core.record import LeaseRecord
from tests.unit.test_heartbeat import FakeClock  # the fake clock the heartbeat tests drive

__all__ = ["FakeClock", "FakeLockLeases", "until"]


class FakeLockLeases:
    """`LockLeaseSource` over a dict. Versions are one counter for all Leases, as etcd's revision."""

    def __init__(self, namespace: str = "default", prefix: str = "locks-") -> None:
        self.namespace = namespace
        self.prefix = prefix
        self.revision = 100
        self.leases: dict[str, dict[str, Any]] = {}
        self.history: list[LockEvent] = []
        self.writes: list[tuple[str, LeaseRecord]] = []
        """Every write of a record (create or update), by Lease name, in order."""
        self.watch_down = False
        """While set, no watch opens, and open ones break."""
        self.watches_open = 0
        self.watches_broken = 0
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ the test's hand

    def name_of(self, key: str) -> str:
        return lease_name_for(self.prefix, key)

    def break_watch(self) -> None:
        self.watch_down = True
        self._poke()

    def expire_watch(self) -> None:
        """The open watch's version is compacted away: it ends with a 410 (WatchExpired)."""
        self.watch_expired = True
        self._poke()

    def heal_watch(self) -> None:
        self.watch_down = False

    def others_write(self, count: int) -> None:
        """Writes to objects outside the lock Leases: etcd's revision is the whole cluster's."""
        self.revision += count

    def put(self, key: str, record: LeaseRecord) -> str:
        """Another pod (or a hand) writes `key`'s Lease; returns its new version."""
        return self._store(self.name_of(key), key, record).version

    def remove(self, key: str) -> None:
        """`kubectl delete lease` (or another pod's garbage collection)."""
        name = self.name_of(key)
        lease = self.leases.pop(name)
        self.revision += 1
        gone = copy.deepcopy(lease)
        gone["metadata"]["resourceVersion"] = str(self.revision)  # the deletion's revision
        self.history.append(LockEvent("deleted", str(self.revision), name, gone))
        self._poke()

    def record(self, key: str) -> LeaseRecord | None:
        lease = self.leases.get(self.name_of(key))
        return LeaseRecord.from_lease(lease) if lease is not None else None

    # ------------------------------------------------------------------ LockLeaseSource

    def store_for(self, name: str, lock_key: str) -> FakeKeyStore:
        return FakeKeyStore(self, name, lock_key)

    async def read(self, name: str, timeout_s: float) -> tuple[dict[str, Any] | None, str]:
        lease = self.leases.get(name)
        return (copy.deepcopy(lease) if lease is not None else None), str(self.revision)

    async def delete(self, name: str, version: str, timeout_s: float) -> bool:
        lease = self.leases.get(name)
        if lease is None or lease["metadata"]["resourceVersion"] != version:
            return False
        self.remove(lease["metadata"]["annotations"][KEY_ANNOTATION])
        return True

    async def list_and_watch(self, idle_timeout_s: float, request_timeout_s: float) -> AsyncIterator[LockEvent]:
        if self.watch_down:
            raise BackendUnavailable("list locks: down")
        version = str(self.revision)
        yield LockEvent("listed", version, items=[copy.deepcopy(lease) for lease in self.leases.values()])
        async for event in self.watch_from(version, idle_timeout_s):
            yield event

    async def watch_from(self, version: str, idle_timeout_s: float) -> AsyncIterator[LockEvent]:
        if self.watch_down:
            raise BackendUnavailable("watch locks: down")
        self.watches_open += 1
        try:
            yield LockEvent("opened", version)
            seen = sum(1 for event in self.history if int(event.version) <= int(version))
            while True:
                if self.watch_down:
                    self.watches_broken += 1
                    raise BackendUnavailable("watch locks: connection reset")
                if getattr(self, "watch_expired", False):
                    self.watch_expired = False
                    self.watches_expired = getattr(self, "watches_expired", 0) + 1
                    raise WatchExpired("watch locks: 410 Gone")
                if seen < len(self.history):
                    seen += 1
                    yield self.history[seen - 1]
                    continue
                changed = self._changed
                await changed.wait()
        finally:
            self.watches_open -= 1

    # ------------------------------------------------------------------ plumbing

    def _poke(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _store(self, name: str, key: str, record: LeaseRecord) -> Versioned:
        self.revision += 1
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": name, "namespace": self.namespace, "resourceVersion": str(self.revision),
                              "annotations": {**record.annotations(), KEY_ANNOTATION: key}},
                 "spec": record.to_spec()}
        self.leases[name] = lease
        self.writes.append((name, record))
        self.history.append(LockEvent("changed", str(self.revision), name, copy.deepcopy(lease)))
        self._poke()
        return Versioned(LeaseRecord.from_lease(lease), str(self.revision))


class FakeKeyStore:
    """`RememberingStore` for one key's Lease."""

    def __init__(self, server: FakeLockLeases, name: str, lock_key: str) -> None:
        self.server, self.name, self.lock_key = server, name, lock_key
        self.key = f"{server.namespace}/{name}"
        self.absent_version: str | None = None

    def remember(self, lease: dict[str, Any]) -> Versioned:
        return Versioned(LeaseRecord.from_lease(lease), str(lease["metadata"]["resourceVersion"]))

    async def get(self, timeout_s: float) -> Versioned | None:
        lease = self.server.leases.get(self.name)
        return self.remember(lease) if lease is not None else None

    async def create(self, record: LeaseRecord, timeout_s: float) -> Versioned:
        if self.name in self.server.leases:
            raise Conflict(f"{self.key} already exists")
        return self.server._store(self.name, self.lock_key, record)

    async def update(self, record: LeaseRecord, expected_version: str, timeout_s: float) -> Versioned:
        lease = self.server.leases.get(self.name)
        if lease is None:
            raise Conflict(f"{self.key} was deleted")
        if lease["metadata"]["resourceVersion"] != expected_version:
            raise Conflict(f"{self.key} is at another version")
        return self.server._store(self.name, self.lock_key, record)

    async def watch(self, idle_timeout_s: float, request_timeout_s: float = 5.0) -> AsyncIterator[WatchEvent]:
        raise NotImplementedError("the keyed-lock driver watches all keys through the source")
        yield  # pragma: no cover  (makes this an async generator)


async def until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Lets the loop run until `condition()`; `limit_s` (real time) only bounds a broken build."""
    for _ in range(int(limit_s / 0.001)):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")
