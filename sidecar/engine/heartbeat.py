"""The async driver: performs the Elector's actions against a backend and feeds back results.

A thin shell: no rule about expiry or hand-over lives here (see election.py). It runs two loops,
`elect` (read / write / wait) and `watch_lease` (a single-object watch that wakes `elect` on
every change), plus `beat` for the periodic heartbeat. The seed's BeatHeartbeat verbs
(try_become_leader, renew_lease, check_leader_health, update_info, shutdown, tick) are kept as
one-step methods for callers that drive the election by hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sidecar.core.clock import Clock
from sidecar.core.election import BeatRole, Done, Elector, Read, Wait, Write
from sidecar.core.lock import BackendUnavailable, Conflict, LeaseStore, LockError, WatchExpired
from sidecar.engine.status import StatusBoard

log = logging.getLogger("lease_sidecar.core.election")

_WATCH_BACKOFF_START_S = 0.1
_WATCH_BACKOFF_CAP_S = 5.0
_WATCH_HEALTHY_S = 5.0
_DROPPED_LIST_READS = 3


class BeatHeartbeat:
    def __init__(self, elector: Elector, backend: LeaseStore, board: StatusBoard,
                 clock: Clock, on_watch_restart: Callable[[], None] | None = None) -> None:
        self.elector = elector
        self.backend = backend
        self.board = board
        self.clock = clock
        self._wake = asyncio.Event()
        self._on_watch_restart = on_watch_restart or (lambda: None)
        self._last_role = BeatRole.UNKNOWN
        self._last_holder: str | None = None
        self._last_token: int | None = None
        """The token of the term last published as leader: a step-down reports that term's end."""
        self._last_fence: tuple[float, str] | None = None
        self._electing = False
        self._watching = False
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_armed_for: float | None = None

    # ------------------------------------------------------------------ seed verbs

    async def tick(self) -> BeatRole:
        """One step of the election without waiting: perform what the Elector wants now (a read,
        then an acquisition or renewal) until it wants to wait. Returns the resulting role.
        Without a running `watch_lease`, it reads the lease first, as the seed's verbs did."""
        if not self._watching:
            await self._perform(Read(self.elector.config.request_timeout))
        for _ in range(4):  # read, write, and a read + write after a conflict at most
            action = self.elector.next_action(self.clock.now())
            if not isinstance(action, Read | Write):
                break
            self._publish()  # a release must find standby already published, as in the elect loop
            await self._perform(action)
        self._publish()
        return self.role

    async def try_become_leader(self) -> bool:
        """Standby: take the lease if it is free or has expired by this process's observation."""
        return await self.tick() is BeatRole.LEADER

    async def renew_lease(self) -> bool:
        """Leader: renew if due. False once leadership is lost (deadline, conflict, or taken)."""
        return await self.tick() is BeatRole.LEADER

    async def check_leader_health(self) -> bool:
        """Is some live holder on the lease, as this process judges it?"""
        await self._perform(Read(self.elector.config.request_timeout))
        return self.board.snapshot()["holder"] is not None

    def update_info(self) -> None:
        self.elector.heartbeat()
        self.board.beat()

    async def shutdown(self) -> None:
        """Release if leading; standby is published before the release is sent. When `elect` is
        running it performs the release and returns; otherwise this does it."""
        self.elector.close(self.clock.now())
        self._publish()  # standby now, before any release is sent
        self._wake.set()
        if not self._electing:
            await self.elect()

    def wake(self) -> None:
        """Decide again now: an app heartbeat or a resign may have changed what the Elector wants."""
        self._wake.set()

    @property
    def role(self) -> BeatRole:
        return self.elector.view(self.clock.now().mono).role

    # ------------------------------------------------------------------ loops

    async def elect(self) -> None:
        """Runs until closed (see `shutdown`) and the release is done."""
        self._electing = True
        try:
            await self._elect()
        finally:
            self._electing = False
            self._publish()

    async def _elect(self) -> None:
        while True:
            action = self.elector.next_action(self.clock.now())
            self._publish()
            if isinstance(action, Done):
                return
            if isinstance(action, Wait):
                self._log_wait(action)
                await self._sleep_until(action.until_mono)
                continue
            await self._perform(action)
            self._publish()

    async def watch_lease(self) -> None:
        """Feed every observed change to the Elector; re-establish a broken watch with backoff."""
        backoff = _WATCH_BACKOFF_START_S
        idle_s = self.elector.config.failover_timeout_s
        self._watching = True
        try:
            await self._watch_forever(backoff, idle_s)
        finally:
            self._watching = False

    async def _watch_forever(self, backoff: float, idle_s: float) -> None:
        request_timeout = self.elector.config.request_timeout
        while True:
            started = self.clock.now().mono
            try:
                first = True
                sent_at = self.elector.write_generation
                async for event in self.backend.watch(idle_s, request_timeout):
                    self.elector.observe(self.clock.now(), event.current, from_stream=not first,
                                         sent_at_generation=sent_at if first else None,
                                         absent_version=self.backend.absent_version)
                    if first and sent_at != self.elector.write_generation:
                        await self._read_after_dropped_list(request_timeout)
                    first = False
                    # Publish now: a loss seen here must not wait for the elect loop's current call.
                    self._publish()
                    self._wake.set()
                continue  # the stream ended quietly: list and watch again
            except WatchExpired as error:
                self._on_watch_restart()
                log.info("watch expired, listing again", extra={"event": "watch_expired", "error": str(error)})
            except (LockError, OSError) as error:
                self._on_watch_restart()
                log.warning("watch broken, retrying", extra={"event": "watch_failed", "error": str(error),
                                                             "retry_in_s": round(backoff, 3)})
            if self.clock.now().mono - started > _WATCH_HEALTHY_S:
                backoff = _WATCH_BACKOFF_START_S  # it had been healthy: this is a fresh failure
            await asyncio.sleep(backoff)
            backoff = min(_WATCH_BACKOFF_CAP_S, backoff * 2)

    async def _read_after_dropped_list(self, request_timeout_s: float) -> None:
        """The new watch's list was dropped: one of our writes landed while it was in flight, so
        the list may already show that write, and the watch, which starts after the list, will
        then never deliver it; the Elector would wait for that echo and ignore every later event.
        A read not overtaken by another write of ours replaces the list (and ends that wait). A
        read that fails raises, and the watch lists again."""
        for _ in range(_DROPPED_LIST_READS):
            sent_at = self.elector.write_generation
            current = await self.backend.get(request_timeout_s)
            if sent_at == self.elector.write_generation:
                self.elector.observe(self.clock.now(), current, sent_at_generation=sent_at,
                                     absent_version=self.backend.absent_version)
                return
        raise BackendUnavailable("our writes kept overtaking the reads after a relist; listing again")

    async def beat(self) -> None:
        interval = self.elector.config.heartbeat_interval_s
        while True:
            self.update_info()
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ plumbing

    def _arm_deadline_timer(self) -> None:
        """Publish at the deadline the app was told (election.py P1: the renew deadline, the
        moment the app's heartbeat TTL lapses, or a drain's end), whatever the loops are doing, so
        the role file and the event streams flip to standby on time even while a call is still in
        flight. (A heartbeat moves the app's moment: the timer then fires early, publishes nothing
        new and is armed again.)"""
        now = self.clock.now().mono
        deadline = self.elector.lead_until_mono if self.elector.is_leader(now) else None
        if deadline == self._deadline_armed_for:
            return
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadline_armed_for = deadline
        if deadline is not None:
            self._deadline_timer = asyncio.get_running_loop().call_later(max(0.0, deadline - now),
                                                                         self._on_deadline)

    def _on_deadline(self) -> None:
        # asyncio may fire a timer a hair early; forgetting the arming makes _publish re-arm if so.
        self._deadline_timer = None
        self._deadline_armed_for = None
        self._publish()
        self._wake.set()  # the elect loop ends the term (and releases, if the app ended it) now

    async def _sleep_until(self, until_mono: float) -> None:
        delay = until_mono - self.clock.now().mono
        if delay <= 0:
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except TimeoutError:
            pass

    async def _perform(self, action: Read | Write) -> None:
        started = self.clock.now()
        try:
            # The backend bounds its own calls; this bound holds even if it forgets.
            async with asyncio.timeout(action.timeout_s + 0.5):
                if isinstance(action, Read):
                    current = await self.backend.get(action.timeout_s)
                    self.elector.observe(self.clock.now(), current, absent_version=self.backend.absent_version)
                    return
                if action.expected_version is None:
                    stored = await self.backend.create(action.record, action.timeout_s)
                else:
                    stored = await self.backend.update(action.record, action.expected_version,
                                                       action.timeout_s)
            self.elector.write_succeeded(self.clock.now(), action, started, stored)
            if action.kind != "release" and log.isEnabledFor(logging.DEBUG):
                # With the role_changed lines, each process's own account of its claim, on the
                # machine's monotonic clock: tests check from it that no two claims overlap.
                log.debug("lease written", extra={"event": "lease_written", "kind": action.kind,
                                                  "started_mono": started.mono,
                                                  "valid_until_mono": self.elector.valid_until_mono})
        except Conflict as error:
            if isinstance(action, Write):
                self.elector.write_conflicted(self.clock.now(), action)
                log.info("lost a write race", extra={"event": f"{action.kind}_conflict", "error": str(error)})
            else:  # a read cannot conflict: a backend that says it did is treated as a failed call
                self.elector.call_failed(self.clock.now(), action)
                log.error("API call failed", extra={"event": "read_failed", "error": str(error)})
        except (BackendUnavailable, LockError, TimeoutError, OSError) as error:
            self.elector.call_failed(self.clock.now(), action)
            kind = action.kind if isinstance(action, Write) else "read"
            log.error("API call failed", extra={"event": f"{kind}_failed", "error": str(error) or repr(error)})

    def _log_wait(self, action: Wait) -> None:
        """Say once why a standby holds back from a free or absent lease (rules F1-F3), or why a
        release is held back (P2: the app was told it leads until then)."""
        fence = (action.until_mono, action.reason)
        if not action.reason or fence == self._last_fence or action.reason.startswith("held by"):
            return
        self._last_fence = fence
        wait_s = round(max(0.0, action.until_mono - self.clock.now().mono), 3)
        if action.holds_release:
            log.warning("release held until the deadline the app was told", extra={
                "event": "release_held", "reason": action.reason, "wait_s": wait_s,
                "until_mono": action.until_mono})
            return
        log.info("waiting before taking the lease", extra={"event": "fence", "reason": action.reason,
                                                            "wait_s": wait_s})

    def _publish(self) -> None:
        snapshot = self.board.snapshot()
        self._arm_deadline_timer()
        role, holder = BeatRole(snapshot["role"]), snapshot["holder"]
        if role is not self._last_role:
            now_mono = self.clock.now().mono
            view = self.elector.view(now_mono)
            extra = {"event": "role_changed", "from_role": str(self._last_role), "to_role": str(role),
                     "holder": holder, "term": snapshot["fencing_token"], "mono": now_mono}
            if role is BeatRole.LEADER and view.term_started is not None:
                extra.update(term_started_mono=view.term_started.mono, valid_until_mono=view.valid_until_mono)
            if role is not BeatRole.LEADER and self._last_role is BeatRole.LEADER:
                # The reason comes with the term it ended, so an earlier term's cannot leak in.
                end = view.term_end
                extra["term"] = self._last_token
                extra["reason"] = end.reason if end is not None and end.fencing_token == self._last_token \
                    else "unknown"
            log.warning("role changed", extra=extra) if self._last_role is BeatRole.LEADER else log.info(
                "role changed", extra=extra)
            self._last_role = role
        elif holder != self._last_holder:
            log.info("holder changed", extra={"event": "holder_changed", "holder": holder})
        self._last_holder = holder
        if role is BeatRole.LEADER:
            self._last_token = snapshot["fencing_token"]
