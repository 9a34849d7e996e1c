"""The members view's loops: keep this candidate's member Lease fresh, and watch everyone's.

A thin shell around `core.members` (naming, the record, the aliveness rule). API cost per
member: one write per heartbeat interval (plus one when its role changes), one watch request per
failover timeout, and the watch delivers every member's writes to every member.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sidecar.core.clock import Clock
from sidecar.core.config import ElectionConfig
from sidecar.core.lock import Conflict, LockError, WatchExpired
from sidecar.core.members import MemberRecord, MemberStore, MemberTable, member_duration_s, member_lease_name
from sidecar.engine.status import Snapshot, StatusBoard

log = logging.getLogger("lease_sidecar.engine.members")

_BACKOFF_START_S = 0.2
_BACKOFF_CAP_S = 5.0


class MemberPresence:
    def __init__(self, store: MemberStore, board: StatusBoard, clock: Clock, identity: str, lease_name: str,
                 config: ElectionConfig) -> None:
        self.store = store
        self.board = board
        self.clock = clock
        self.identity = identity
        self.table = MemberTable()
        self.name = member_lease_name(lease_name, identity)
        self._interval_s = config.heartbeat_interval_s
        self._duration_s = member_duration_s(config.heartbeat_ttl_s)
        self._timeout_s = config.request_timeout
        self._idle_s = config.failover_timeout_s
        self._version: str | None = None
        self._role: str | None = None
        self._app_alive: bool | None = None
        self._sitting_out: bool | None = None
        self.terminating = False
        """Set by `begin_terminating` (the stop signal): the record says so from its next write."""
        self._role_changed = asyncio.Event()
        """Set when the role, the app's liveness, a sit-out or termination differs from what the
        record last carried."""
        self.shown_alive = False
        """A record saying this member's app is alive has been written (readiness waits for it:
        a leader being replaced then already sees this pod as a live successor)."""
        self._failing = False
        self._writing = asyncio.Lock()
        self._withdrawn = False
        """Set by withdraw(): no write may re-create the record after its deletion."""
        board.subscribe(self._on_snapshot)

    # ------------------------------------------------------------------ what /members shows

    def members_json(self) -> dict[str, Any]:
        now = self.clock.now().mono
        return {"enabled": True, "members": self.table.rows(now), "counts": self.table.counts(now)}

    # ------------------------------------------------------------------ loops

    async def renew_forever(self) -> None:
        """Write this member's record every heartbeat interval, and at once when its role or its
        app's liveness changes."""
        while True:
            self._role_changed.clear()
            await self.renew_once()
            await self._remove_stale()
            try:
                await asyncio.wait_for(self._role_changed.wait(), self._interval_s)
            except TimeoutError:
                pass

    async def renew_once(self) -> None:
        async with self._writing:
            if not self._withdrawn:
                await self._put()

    async def _put(self) -> None:
        version = self._version or self.table.version_of(self.name)
        try:
            record = self._record()
            self._version = await self.store.put(self.name, record, version, self._timeout_s)
            self.shown_alive = self.shown_alive or record.app_alive is True
            if self._failing:
                log.info("member record written again", extra={"event": "member_renewed"})
            self._failing = False
        except (LockError, OSError) as error:
            self._version = None  # re-read from the watch (or create) next time
            if not self._failing and not isinstance(error, Conflict):
                log.warning("cannot write the member record", extra={"event": "member_renew_failed",
                                                                      "error": str(error)[:300]})
            self._failing = not isinstance(error, Conflict)

    async def watch_forever(self) -> None:
        backoff = _BACKOFF_START_S
        while True:
            try:
                items, version = await self.store.list(self._timeout_s)
                now = self.clock.now()
                self.table.replace_all(now.mono, now.wall, items)
                backoff = _BACKOFF_START_S
                while True:
                    async for name, record, seen_version in self.store.watch(version, self._idle_s):
                        now = self.clock.now()
                        self.table.observe(now.mono, now.wall, name, record, seen_version)
                        version = seen_version or version
            except WatchExpired:
                continue  # list again
            except (LockError, OSError) as error:
                log.warning("member watch broken, retrying", extra={"event": "member_watch_failed",
                                                                    "error": str(error)[:300]})
            await asyncio.sleep(backoff)
            backoff = min(_BACKOFF_CAP_S, backoff * 2)

    def begin_terminating(self) -> None:
        """The stop signal arrived: say so in the record at once (the renew loop writes it while
        the release goes on), so no leader names this member its successor."""
        if not self.terminating:
            self.terminating = True
            self._role_changed.set()

    async def withdraw(self) -> None:
        """Clean shutdown: delete this member's record (bounded by the API timeout), after any write
        in flight, and with no write after it."""
        self._withdrawn = True
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._writing.acquire()  # a write in flight lands first; none starts after
            await self.store.delete(self.name, None, self._timeout_s)
        except (LockError, OSError, TimeoutError) as error:
            log.warning("cannot delete the member record; it will go stale",
                        extra={"event": "member_withdraw_failed", "error": str(error)[:300]})

    # ------------------------------------------------------------------ plumbing

    def _record(self) -> MemberRecord:
        snapshot = self.board.snapshot()
        app = snapshot["app"]
        self._role, self._app_alive = snapshot["role"], app["alive"]
        self._sitting_out = app["sit_out_until"] is not None
        return MemberRecord(identity=self.identity, role=snapshot["role"], duration_s=self._duration_s,
                            info=app["info"], app_heartbeat_at=app["last_heartbeat_at"], app_alive=app["alive"],
                            renew_time=self.clock.now().wall, terminating=self.terminating,
                            sitting_out=self._sitting_out)

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        if self._role is not None and (snapshot["role"] != self._role or snapshot["app"]["alive"] != self._app_alive
                                       or (snapshot["app"]["sit_out_until"] is not None) != self._sitting_out):
            self._role_changed.set()

    async def _remove_stale(self) -> None:
        for name, version in self.table.removable(self.clock.now().mono):
            if name == self.name:
                continue
            try:
                await self.store.delete(name, version, self._timeout_s)
                log.info("removed a stale member record", extra={"event": "member_removed", "member": name})
            except (LockError, OSError):
                pass  # someone else may be doing it; try again next interval
