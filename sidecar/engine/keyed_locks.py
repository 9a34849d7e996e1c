"""Keyed locks' driver: one list + watch for every lock Lease, one task per key that an owner on this
pod wants, renewals, limits, garbage collection, and release of everything at shutdown.

A thin shell like `heartbeat.BeatHeartbeat`: every decision is a `KeyElector`'s (core/keyed_locks.py).
Who renews: the sidecar, every third of --lock-max-ttl, while the owner renews (PUT) within its
ttl; each PUT is local (no API call). API cost per key: acquire 1 write (a create or an update),
then 3 renewals per --lock-max-ttl, release 1 write; a never-seen key costs no read while the
watch is open (after a break, each key acted on is read once: core K3).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sidecar.core.clock import Clock
from sidecar.core.config import ElectionConfig
from sidecar.core.election import Done, Moment, Read, Wait, Write
from sidecar.core.keyed_locks import (
    KeyElector,
    LockEvent,
    LockLimits,
    OwnerGate,
    RequestRate,
    check_key,
    lease_key,
    lease_name,
    lease_name_for,
)
from sidecar.core.liveness import AppLiveness
from sidecar.core.lock import BackendUnavailable, Conflict, KeyHold, LeaseStore, LockError, Versioned, WatchExpired

log = logging.getLogger("lease_sidecar.locks")

_WATCH_BACKOFF_START_S = 0.1
_WATCH_BACKOFF_CAP_S = 5.0


class RememberingStore(LeaseStore, Protocol):
    def remember(self, lease: dict[str, Any]) -> Versioned: ...


class LockLeaseSource(Protocol):
    """What the driver needs of the Kubernetes side (kube/lock_leases.LockLeases)."""

    namespace: str
    prefix: str

    def store_for(self, name: str, lock_key: str) -> RememberingStore: ...

    async def read(self, name: str, timeout_s: float) -> tuple[dict[str, Any] | None, str]: ...

    async def delete(self, name: str, version: str, timeout_s: float) -> bool: ...

    def list_and_watch(self, idle_timeout_s: float, request_timeout_s: float) -> AsyncIterator[LockEvent]: ...

    def watch_from(self, version: str, idle_timeout_s: float) -> AsyncIterator[LockEvent]: ...


class LockCounters(Protocol):
    """Metrics per prefix (publish/lock_metrics.py); no per-key label."""

    def acquired(self) -> None: ...

    def conflicted(self) -> None: ...

    def lost(self) -> None: ...


class _NoCounters:
    def acquired(self) -> None:
        pass

    def conflicted(self) -> None:
        pass

    def lost(self) -> None:
        pass


@dataclass
class LockRefused(Exception):
    """A refused request: `status` 409 (held), 429 (limits) with `retry_after_s`."""

    status: int
    message: str
    holder: str | None = None
    retry_after_s: float | None = None
    lease: str | None = None


@dataclass
class KeyEntry:
    name: str
    key: str
    elector: KeyElector
    gate: OwnerGate
    store: RememberingStore
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    pending: bool = False
    """An acquisition is under way (its answer not given yet)."""
    waits: bool = False
    """That acquisition may wait (?wait=) rather than give up at the first fence."""
    held_token: int | None = None
    """The token of the hold given to the owner; None when none is held."""
    lost: dict[str, str] = field(default_factory=dict)
    """Recent owners whose hold ended, and why (for a clear 409 on their renewal)."""
    last_version: str | None = None
    unchanged_since_mono: float = 0.0

    def notify(self) -> None:
        done, self.changed = self.changed, asyncio.Event()
        done.set()


class KeyedLocks:
    """The seed's `DistributedLockBackend` over Leases; also the richer calls the local API uses."""

    def __init__(self, leases: LockLeaseSource, clock: Clock, pod_identity: str, config: ElectionConfig,
                 limits: LockLimits, app: AppLiveness | None = None, counters: LockCounters | None = None) -> None:
        self.leases = leases
        self.clock = clock
        self.pod_identity = pod_identity
        self.config = config
        self.limits = limits
        self.app = app
        self.counters = counters or _NoCounters()
        self.rate = RequestRate(limits.rate_per_s, limits.burst)
        self.entries: dict[str, KeyEntry] = {}
        """By Lease name: every key of the prefix seen, and every key asked for here."""
        self._watch_version = ""
        self._watched_since_mono: float | None = None
        self._synced = asyncio.Event()
        self._closing = False

    # ------------------------------------------------------------------ seed interface

    async def try_acquire(self, key: str, owner: str, ttl_s: float) -> KeyHold | None:
        try:
            return await self.acquire(key, ttl_s, 0.0, owner=owner)
        except LockRefused:
            return None

    async def renew(self, key: str, owner: str, ttl_s: float) -> KeyHold | None:
        try:
            return self.renew_hold(key, owner)
        except LockRefused:
            return None

    async def release(self, key: str, owner: str) -> bool:
        try:
            return await self.release_hold(key, owner)
        except LockRefused:
            return False

    async def is_locked(self, key: str) -> bool:
        return bool(self.describe(key)["locked"])

    # ------------------------------------------------------------------ the local API's calls

    def admit(self) -> None:
        """The per-pod request rate (429 with Retry-After beyond it)."""
        retry_s = self.rate.take(self.clock.now().mono)
        if retry_s > 0:
            raise LockRefused(429, "too many lock requests from this pod", retry_after_s=retry_s)

    @property
    def max_ttl_s(self) -> float:
        return self.config.lease_ttl_s

    @property
    def held_count(self) -> int:
        return sum(1 for entry in self.entries.values() if entry.held_token is not None)

    async def acquire(self, key: str, ttl_s: float, wait_s: float, owner: str | None = None) -> KeyHold:
        check_key(key)
        if self._closing:
            raise LockRefused(409, "the sidecar is shutting down")
        entry = self._entry(lease_name_for(self.leases.prefix, key), key)
        if entry.pending or entry.held_token is not None or entry.gate.owner is not None \
                or entry.elector.owes_release() or entry.elector.has_term():
            raise LockRefused(409, "this pod already holds or is acquiring this key (each owner acquires its own)",
                              holder=self._holder(entry), lease=self._lease(entry), retry_after_s=1.0)
        busy = sum(1 for other in self.entries.values() if other.pending or other.held_token is not None)
        if busy >= self.limits.max_keys:
            raise LockRefused(429, f"this pod holds or is acquiring {busy} keys (--lock-max-keys)",
                              retry_after_s=self.config.renewal_interval_s)
        owner = owner or secrets.token_hex(8)
        now = self.clock.now()
        app = entry.gate.app
        if wait_s <= 0 and app is not None and app.ttl_s is not None and not app.view(now.mono).alive:
            # Only a heartbeat opens the gate, and a try_acquire does not wait for one: say so now
            # rather than after the budget below, as "not free yet".
            raise LockRefused(409, "the app is not alive (--app-heartbeat-ttl): POST /heartbeat first, "
                                   "or acquire with ?wait=", lease=self._lease(entry), retry_after_s=1.0)
        # Without a wait the answer comes at the first fence, or after two API timeouts at most.
        budget_s = wait_s if wait_s > 0 else 2 * self.config.request_timeout + 0.5
        entry.elector.set_owner(owner)
        entry.gate.want(owner, ttl_s, now.mono + budget_s)
        entry.pending, entry.waits = True, wait_s > 0
        changed = entry.changed
        self._run(entry)
        try:
            async with asyncio.timeout(budget_s + self.config.request_timeout + 1.0):
                while entry.pending:
                    await changed.wait()
                    changed = entry.changed
        except TimeoutError:
            self._give_up(entry, "timed out")
        if entry.held_token is not None and entry.gate.owner == owner:
            return self._hold(entry, owner, self.clock.now())
        until, _ = entry.elector.fenced_until(self.clock.now())
        retry_s = until - self.clock.now().mono if math.isfinite(until) else None
        raise LockRefused(409, "held by another owner" if self._holder(entry) else "not free yet",
                          holder=self._holder(entry), lease=self._lease(entry),
                          retry_after_s=max(0.1, retry_s) if retry_s is not None else 1.0)

    def renew_hold(self, key: str, owner: str) -> KeyHold:
        entry = self._owned(key, owner)
        now = self.clock.now()
        if not entry.elector.is_leader(now.mono):
            self._note(entry, now)
            raise LockRefused(409, f"lost: {entry.lost.get(owner, 'no longer held')}", lease=self._lease(entry))
        entry.gate.renewed(now.mono)
        entry.wake.set()
        return self._hold(entry, owner, now)

    async def release_hold(self, key: str, owner: str) -> bool:
        """Release and wait (one API timeout at most) for the release to be written. True when it was."""
        entry = self._owned(key, owner)
        entry.elector.owner_released()  # K7: the owner stopped, its deadline holds nothing back
        entry.held_token = None
        entry.gate.withdraw("released by its owner")
        entry.notify()
        entry.wake.set()
        changed = entry.changed
        self._run(entry)
        try:
            async with asyncio.timeout(2 * self.config.request_timeout + 0.5):
                while entry.task is not None:  # the driver writes the release, then ends
                    await changed.wait()
                    changed = entry.changed
        except TimeoutError:
            return False
        record = entry.elector.observed_record
        return record is None or record.holder == ""

    def app_seen_alive(self) -> None:
        """The app heartbeated (or passed a probe). With --app-heartbeat-ttl no key is taken while
        the app is not alive, and an acquisition held back by that sleeps until the end of its
        wait (only a heartbeat opens the gate, so no timer is due before): wake it to decide again
        now. Holders need no wake: a heartbeat only moves their deadlines later."""
        for entry in self.entries.values():
            if entry.pending:
                entry.wake.set()

    def describe(self, key: str, owner: str | None = None) -> dict[str, Any]:
        """GET /locks/{key}: is_locked and holder as this sidecar observes them; for the owner its
        token and deadline."""
        check_key(key)
        name = lease_name_for(self.leases.prefix, key)
        entry = self.entries.get(name)
        now = self.clock.now()
        body: dict[str, Any] = {"key": key, "lease": f"{self.leases.namespace}/{name}", "locked": False,
                                "holder": None, "observed": entry is not None and entry.elector.view(now.mono)
                                .lease_observed}
        if entry is None:
            return body
        record = entry.elector.observed_record
        if record is not None and record.holder:
            fence, _ = entry.elector.fenced_until(now)
            mine = entry.held_token is not None and entry.elector.is_leader(now.mono)
            body["locked"] = mine or fence > now.mono
            body["holder"] = record.holder
        if owner is not None and entry.gate.owner == owner and entry.held_token is not None:
            body.update(self._hold_json(self._hold(entry, owner, now), now))
        return body

    def hold_json(self, hold: KeyHold) -> dict[str, Any]:
        return self._hold_json(hold, self.clock.now())

    async def close(self, timeout_s: float) -> None:
        """Release every lock this pod holds (SIGTERM): standby and no more renewals first, then each
        release once the deadline told to its owner passed (K7), within `timeout_s`; a lock whose
        deadline is later is left to expire (others wait for it by observation)."""
        self._closing = True
        now = self.clock.now()
        driving = []
        for entry in self.entries.values():
            if entry.held_token is not None or entry.pending or entry.gate.owner is not None:
                if entry.held_token is not None and entry.gate.owner is not None:
                    entry.lost[entry.gate.owner] = "sidecar shutting down"
                if entry.elector.promised_until_mono > now.mono + timeout_s:
                    log.warning("lock left to expire: its owner was told a later deadline than shutdown allows",
                                extra={"event": "lock_left_to_expire", "lease": entry.name,
                                       "told_for_s": round(entry.elector.promised_until_mono - now.mono, 3)})
                entry.pending, entry.held_token = False, None
                entry.gate.withdraw("sidecar shutting down")
                entry.elector.close(now)
                entry.notify()
                self._run(entry)
            if entry.task is not None:
                driving.append(entry.task)
        if driving:
            await asyncio.wait(driving, timeout=timeout_s)

    # ------------------------------------------------------------------ loops

    async def watch_forever(self) -> None:
        """Every lock Lease of the election, fed to its key's Elector; resumed from the last version
        when the stream breaks (nothing counts as watched until it is open again), listed again
        only when it cannot be resumed (K3)."""
        backoff = _WATCH_BACKOFF_START_S
        idle_s = self.config.failover_timeout_s
        version = ""
        while True:
            try:
                stream = self.leases.watch_from(version, idle_s) if version else \
                    self.leases.list_and_watch(idle_s, self.config.request_timeout)
                async for event in stream:
                    self._on_event(event)
                    version = event.version
                    backoff = _WATCH_BACKOFF_START_S
            except WatchExpired as error:
                log.info("lock watch expired, listing again", extra={"event": "lock_watch_expired",
                                                                     "error": str(error)})
                version = ""
                self._lose_sight()  # K3: a 410 is a break too; every earlier view is read again
            except (LockError, OSError) as error:
                self._lose_sight()
                log.warning("lock watch broken, resuming", extra={"event": "lock_watch_failed", "error": str(error),
                                                                  "retry_in_s": round(backoff, 3)})
            await asyncio.sleep(backoff)
            backoff = min(_WATCH_BACKOFF_CAP_S, backoff * 2)

    def _lose_sight(self) -> None:
        """K3 after a broken watch: from the break until the resumed watch opens, nothing here is
        watched, so no absence counts as seen on the stream (a key this sidecar has not seen is
        read, and an absence found waits a full --lock-max-ttl), and every view taken before the
        break is read again before it is acted on (the Lease may have been taken, released and
        collected meanwhile, with tokens above any version seen here)."""
        self._watched_since_mono = None
        self._synced.clear()
        for entry in self.entries.values():
            entry.elector.lost_sight()

    async def gc_forever(self) -> None:
        """K6: delete Leases that have shown a release for --lock-gc-after; one check per tenth of it."""
        gc_after_s = self.limits.gc_after_s
        while True:
            await asyncio.sleep(max(1.0, gc_after_s / 10))
            now = self.clock.now().mono
            for entry in list(self.entries.values()):
                record = entry.elector.observed_record
                version = entry.elector.observed_version
                if record is None or version is None or record.holder or entry.task is not None \
                        or entry.gate.owner is not None or entry.pending:
                    continue
                # Spread the pods' attempts: each waits up to a tenth longer, by its own identity.
                spread = int(hashlib.sha256(f"{self.pod_identity}/{entry.name}".encode()).hexdigest()[:4], 16)
                if now < entry.unchanged_since_mono + gc_after_s * (1 + spread / 0xFFFF / 10):
                    continue
                try:
                    deleted = await self.leases.delete(entry.name, version, self.config.request_timeout)
                except (LockError, OSError) as error:
                    log.warning("lock gc failed", extra={"event": "lock_gc_failed", "error": str(error)})
                    continue
                if deleted:
                    log.info("released lock collected", extra={"event": "lock_collected", "lease": entry.name})

    # ------------------------------------------------------------------ per key

    def _entry(self, name: str, key: str, from_event: bool = False) -> KeyEntry:
        entry = self.entries.get(name)
        if entry is None:
            gate = OwnerGate(self.app)
            elector = KeyElector(self.pod_identity, self.config, gate)
            entry = KeyEntry(name, key, elector, gate, self.leases.store_for(name, key))
            self.entries[name] = entry
            if self._synced.is_set() and not from_event:
                # Absent up to the stream's latest version (K3, K4): no read needed.
                self._observe(entry, None, self._watch_version, from_stream=False, stream_view=True)
        return entry

    def _observe(self, entry: KeyEntry, lease: dict[str, Any] | None, version: str, *, from_stream: bool,
                 stream_view: bool) -> None:
        now = self.clock.now()
        elector = entry.elector
        elector.watched_since_mono = self._watched_since_mono if stream_view else None
        current = entry.store.remember(lease) if lease is not None else None
        # Absent: `version` is the store's at or after the absence (the list's, the deletion's, or
        # the stream's latest); a creation's token is 1 + it (election.py L2, core K4), as the
        # election's driver passes its store's absent_version.
        entry.store.absent_version = version if current is None and version.isdigit() else None
        if entry.store.absent_version is not None:
            elector.version_floor = max(elector.version_floor, int(entry.store.absent_version))
        elector.observe(now, current, from_stream=from_stream, absent_version=entry.store.absent_version)
        seen = current.version if current is not None else None
        if seen != entry.last_version:
            entry.last_version, entry.unchanged_since_mono = seen, now.mono
        self._note(entry, now)
        entry.wake.set()

    def _on_event(self, event: LockEvent) -> None:
        self._watch_version = event.version
        if self._watched_since_mono is None and event.kind != "listed":
            # K3: a watch resumed after a break is open again; every change after the version it
            # resumed from will follow. Its age, not the first list's, bounds the waits from now.
            self._watched_since_mono = self.clock.now().mono
            self._synced.set()
        if event.kind == "listed":
            self._watched_since_mono = self.clock.now().mono
            listed = {lease_name(item): item for item in event.items}
            for item in event.items:
                key = lease_key(item)
                if key is not None:
                    self._observe(self._entry(lease_name(item), key, True), item, event.version, from_stream=False,
                                  stream_view=True)
            for name, entry in list(self.entries.items()):
                if name not in listed:
                    self._observe(entry, None, event.version, from_stream=False, stream_view=True)
            self._synced.set()
        elif event.kind in ("changed", "deleted") and event.lease is not None:
            key = lease_key(event.lease)
            entry = self.entries.get(event.name)
            if entry is None:
                if key is None or event.kind == "deleted":
                    return
                entry = self._entry(event.name, key, True)
            self._observe(entry, event.lease if event.kind == "changed" else None, event.version,
                          from_stream=True, stream_view=True)
            self._forget_if_idle(entry)

    def _forget_if_idle(self, entry: KeyEntry) -> None:
        """A deleted key nobody here wants, with no fence ahead, needs no Elector (K3, K4 cover it)."""
        now = self.clock.now()
        if entry.elector.observed_record is None and entry.task is None and entry.gate.owner is None \
                and not entry.pending and entry.held_token is None \
                and entry.elector.fenced_until(now)[0] <= now.mono:
            self.entries.pop(entry.name, None)

    def _run(self, entry: KeyEntry) -> None:
        entry.wake.set()
        if entry.task is None or entry.task.done():
            entry.task = asyncio.create_task(self._drive(entry), name=f"lock {entry.name}")

    async def _drive(self, entry: KeyEntry) -> None:
        elector = entry.elector
        try:
            while True:
                now = self.clock.now()
                action = elector.next_action(now)
                self._note(entry, now, action)
                if isinstance(action, Done):
                    return
                if isinstance(action, Wait):
                    if entry.gate.owner is None and not entry.pending and not elector.owes_release() \
                            and not elector.is_leader(now.mono):
                        return
                    until = action.until_mono
                    if entry.pending:
                        until = min(until, entry.gate.until_mono)  # the end of the owner's wait
                    await self._sleep_until(entry, until)
                    continue
                await self._perform(entry, action)
        except Exception:  # a bug must not leave an acquisition waiting for an answer
            log.exception("lock driver failed", extra={"event": "lock_driver_failed", "lease": entry.name})
            self._give_up(entry, "internal error")
        finally:
            entry.task = None
            entry.notify()

    def _note(self, entry: KeyEntry, now: Moment, action: object = None) -> None:
        """Tell waiters what changed: acquired, lost, or (without a wait) fenced off."""
        elector, gate = entry.elector, entry.gate
        leading = elector.is_leader(now.mono)
        owner = gate.owner
        if leading and entry.pending and owner is not None:
            entry.pending, entry.held_token = False, elector.view(now.mono).fencing_token
            gate.renewed(now.mono)  # the owner's ttl runs from the acquisition
            self.counters.acquired()
            entry.notify()
        elif not leading and entry.held_token is not None:
            end = elector.view(now.mono).term_end
            reason = end.reason if end is not None else (gate.blocked_reason(now.mono) or "no longer held")
            if owner is not None:
                entry.lost[owner] = reason
                while len(entry.lost) > 8:
                    entry.lost.pop(next(iter(entry.lost)))
                gate.withdraw(f"lost: {reason}")
            entry.held_token = None
            self.counters.lost()
            log.warning("lock lost", extra={"event": "lock_lost", "lease": entry.name, "reason": reason})
            entry.notify()
        elif entry.pending:
            fenced = isinstance(action, Wait) and elector.fenced_until(now)[0] > now.mono
            if (fenced and not entry.waits) or now.mono >= gate.until_mono or owner is None:
                self._give_up(entry, "fenced" if fenced else "timed out")

    def _give_up(self, entry: KeyEntry, why: str) -> None:
        if not entry.pending:
            return
        entry.pending = False
        entry.gate.withdraw(f"acquisition gave up: {why}")
        self.counters.conflicted()
        entry.notify()
        entry.wake.set()

    async def _sleep_until(self, entry: KeyEntry, until_mono: float) -> None:
        delay = until_mono - self.clock.now().mono
        if delay <= 0:
            return
        entry.wake.clear()
        try:
            await asyncio.wait_for(entry.wake.wait(), delay)
        except TimeoutError:
            pass

    async def _perform(self, entry: KeyEntry, action: Read | Write) -> None:
        elector = entry.elector
        started = self.clock.now()
        try:
            async with asyncio.timeout(action.timeout_s + 0.5):
                if isinstance(action, Read):
                    lease, version = await self.leases.read(entry.name, action.timeout_s)
                    # A read is not the stream: F3 unchanged (K3), the list's version is K4's floor.
                    self._observe(entry, lease, version, from_stream=False, stream_view=False)
                    return
                if action.expected_version is None:
                    stored = await entry.store.create(action.record, action.timeout_s)
                else:
                    stored = await entry.store.update(action.record, action.expected_version, action.timeout_s)
            elector.write_succeeded(self.clock.now(), action, started, stored)
            if action.kind != "release" and log.isEnabledFor(logging.DEBUG):
                # Each process's own account of its claims (tests check no two overlap).
                log.debug("lock written", extra={"event": "lock_written", "kind": action.kind, "lease": entry.name,
                                                 "token": stored.record.fencing_token,
                                                 "started_mono": started.mono,
                                                 "valid_until_mono": elector.valid_until_mono})
        except Conflict as error:
            if isinstance(action, Write):
                elector.write_conflicted(self.clock.now(), action)
            else:
                elector.call_failed(self.clock.now(), action)
            log.info("lock write lost a race", extra={"event": "lock_conflict", "lease": entry.name,
                                                      "error": str(error)})
        except (BackendUnavailable, LockError, TimeoutError, OSError) as error:
            elector.call_failed(self.clock.now(), action)
            log.error("lock API call failed", extra={"event": "lock_call_failed", "lease": entry.name,
                                                     "error": str(error) or repr(error)})
        self._note(entry, self.clock.now())

    # ------------------------------------------------------------------ answers

    def _owned(self, key: str, owner: str) -> KeyEntry:
        check_key(key)
        entry = self.entries.get(lease_name_for(self.leases.prefix, key))
        if entry is None or entry.gate.owner != owner or entry.held_token is None:
            why = entry.lost.get(owner) if entry is not None else None
            raise LockRefused(409, f"lost: {why}" if why else "not held by this owner",
                              lease=self._lease(entry) if entry is not None else None)
        return entry

    def _hold(self, entry: KeyEntry, owner: str, now: Moment) -> KeyHold:
        """What the owner is told: its deadline (K2) is a promise no release breaks (K7)."""
        valid_until = entry.elector.promise_owner(now.mono)
        return KeyHold(entry.key, owner, entry.held_token or 0, self._lease(entry), valid_until)

    def _hold_json(self, hold: KeyHold, now: Moment) -> dict[str, Any]:
        return {"key": hold.key, "owner": hold.owner, "fencing_token": hold.fencing_token, "lease": hold.lease,
                "valid_until_monotonic": hold.valid_until_monotonic,
                "valid_for_seconds": max(0.0, hold.valid_until_monotonic - now.mono)}

    def _lease(self, entry: KeyEntry) -> str:
        return f"{self.leases.namespace}/{entry.name}"

    @staticmethod
    def _holder(entry: KeyEntry) -> str | None:
        record = entry.elector.observed_record
        return record.holder or None if record is not None else None

