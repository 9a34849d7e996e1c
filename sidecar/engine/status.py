"""The election's public face: a versioned snapshot (the seed's HeartbeatInfo, grown up).

`version` increases whenever role, holder or fencing token changes. A renewal moves the leader's
deadline (`valid_until_monotonic`) without a new version: it is a *renewal*, which event streams
push as its own event and renewal listeners (the role files) hear of. Waiters (long-poll, event
streams) share one future per version (and one per renewal), so ten thousand idle waiters cost
ten thousand small coroutines and nothing per change beyond waking them.

Deadlines are given twice: `valid_until` (wall clock, for people) and `valid_until_monotonic`
(this node's CLOCK_MONOTONIC, which every container of the pod shares: `time.monotonic()` in the
app reads the same clock), plus `valid_for_seconds`, the time left at the moment of the answer.
An app fences itself by the monotonic one: a wall clock stepped backwards cannot extend it. Every
deadline shown here is a promise: the election writes no release before it has passed, unless the
app resigns (election.py P2), so the board asks the Elector through `publish`, not `view`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sidecar import __version__
from sidecar.core.clock import Clock, rfc3339, wall_at
from sidecar.core.election import BeatRole, Elector, Moment
from sidecar.core.liveness import AppLiveness

Snapshot = dict[str, Any]

log = logging.getLogger("lease_sidecar.app")


class StatusBoard:
    def __init__(self, elector: Elector, clock: Clock, lease: str, stale_after_s: float,
                 app: AppLiveness | None = None, lease_uid: Callable[[], str | None] | None = None,
                 draining: Callable[[], bool] | None = None) -> None:
        self._elector = elector
        self._lease_uid = lease_uid or (lambda: None)
        """The Lease's metadata.uid as last observed (the backend's), None before one is seen."""
        self._draining = draining or (lambda: False)
        """True while a graceful release waits for the app to finish (--handover-drain-timeout)."""
        self._app = app or AppLiveness()
        self._clock = clock
        self.lease = lease
        self._stale_after_s = stale_after_s
        self.version = 0
        self._key: tuple[Any, ...] | None = None
        self._app_alive: bool | None = None
        self._changed: asyncio.Future[None] | None = None
        self._renewed: asyncio.Future[None] | None = None
        self._deadline_mono: float | None = None
        """The published leader deadline: a new one under the same version is a renewal."""
        self.renewals = 0
        """Counts published deadline moves under an unchanged version (the SSE `renewal` events)."""
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._renewal_listeners: list[Callable[[Snapshot], None]] = []
        self.last_heartbeat_at: str | None = None

    def subscribe(self, listener: Callable[[Snapshot], None], renewals: bool = False) -> None:
        """Called synchronously with the new snapshot on every version change (and heartbeat);
        with `renewals`, also whenever a renewal moves the leader's deadline."""
        self._listeners.append(listener)
        if renewals:
            self._renewal_listeners.append(listener)

    def snapshot(self, force_publish: bool = False) -> Snapshot:
        """Fresh at the moment of the call: a leader past its deadline already reads standby.
        Publishes (version bump, waiters, listeners) whenever role, holder or token changed, and
        tells the listeners alone when the app's liveness changed."""
        now = self._clock.now()
        view = self._elector.publish(now.mono)  # what goes out binds a later release (election.py P2)
        draining = bool(self._draining())
        # A drain starting is news the app must hear at once (it should finish and resign).
        key = (view.role, view.holder, view.fencing_token, draining)
        changed = key != self._key
        if changed:
            self._key = key
            self.version += 1
        deadline = view.valid_until_mono if view.role is BeatRole.LEADER else None
        renewed = not changed and deadline is not None and deadline != self._deadline_mono
        self._deadline_mono = deadline
        if renewed:
            self.renewals += 1
        body: Snapshot = {
            "role": str(view.role),
            "is_leader": view.role is BeatRole.LEADER,
            "identity": self._elector.identity,
            "holder": view.holder,
            "lease": self.lease,
            "fencing_token": view.fencing_token,
            "term_started_at": rfc3339(view.term_started.wall) if view.term_started else None,
            "valid_until": rfc3339(wall_at(now, deadline)) if deadline is not None else None,
            "valid_until_monotonic": deadline,
            "valid_for_seconds": None if deadline is None else round(max(0.0, deadline - now.mono), 6),
            "lease_uid": self._lease_uid(),
            "draining": draining,
            "observed_at": rfc3339(view.observed.wall) if view.observed else None,
            "version": self.version,
            "heartbeat_at": self.last_heartbeat_at,
            "stale_after_seconds": self._stale_after_s,
            "sidecar_version": __version__,
            "app": self._app_section(now),
        }
        if changed:
            self._wake_waiters()
        elif renewed:
            self._wake_renewal_waiters()
        # The app's liveness does not change the version (the role did not change), but listeners
        # hear of it at once: the member record, which readiness and successor choice depend on.
        app_changed = body["app"]["alive"] != self._app_alive
        self._app_alive = body["app"]["alive"]
        if app_changed and body["app"]["required"]:
            self._log_app_liveness(body["app"])
        if changed or force_publish or app_changed:
            for listener in self._listeners:
                listener(body)
        elif renewed:
            for listener in self._renewal_listeners:
                listener(body)
        return body

    @staticmethod
    def _log_app_liveness(app: dict[str, Any]) -> None:
        alive = bool(app["alive"])
        log.log(logging.INFO if alive else logging.WARNING, "app alive" if alive else "app not alive",
                extra={"event": "app_liveness", "alive": alive, "heartbeats": app["heartbeats"],
                       "since_last_heartbeat_s": app["since_last_heartbeat_seconds"],
                       "ttl_s": app["ttl_seconds"]})

    def _app_section(self, now: Moment) -> dict[str, Any]:
        app = self._app.view(now.mono)
        since = app.since_last_heartbeat_s
        return {
            "required": app.required,
            "ttl_seconds": app.ttl_s,
            "last_heartbeat_at": rfc3339(app.last_heartbeat_wall),
            "since_last_heartbeat_seconds": None if since is None else round(since, 3),
            "alive": app.alive,
            "info": app.info,
            "heartbeats": app.heartbeats,
            "sit_out_until": rfc3339(wall_at(now, app.sit_out_until_mono)) if app.sit_out_until_mono else None,
        }

    def beat(self) -> Snapshot:
        """A heartbeat: listeners are told even without a change, so files show liveness."""
        self.last_heartbeat_at = rfc3339(self._clock.now().wall)
        return self.snapshot(force_publish=True)

    async def wait_for_change(self, since: int | None, timeout_s: float) -> Snapshot:
        """Return at once if the version differs from `since`; else on change, else at timeout."""
        body = self.snapshot()
        if since is None or body["version"] != since:
            return body
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._changed), timeout_s)
        except TimeoutError:
            pass
        return self.snapshot()

    async def wait_for_update(self, since: int, deadline_mono: float | None, timeout_s: float) -> Snapshot:
        """For event streams: return at once if the version differs from `since` or the leader's
        deadline from `deadline_mono` (a renewal); else at the next change or renewal, else at
        timeout (same version and deadline: the caller sends a keep-alive)."""
        body = self.snapshot()
        if body["version"] != since or body["valid_until_monotonic"] != deadline_mono:
            return body
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        if self._renewed is None or self._renewed.done():
            self._renewed = asyncio.get_running_loop().create_future()
        # asyncio.wait never cancels what it waits on, and removes its callbacks when it returns.
        await asyncio.wait([self._changed, self._renewed], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        return self.snapshot()

    def _wake_waiters(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None
        self._wake_renewal_waiters()  # a stream waiting for either hears of it

    def _wake_renewal_waiters(self) -> None:
        if self._renewed is not None and not self._renewed.done():
            self._renewed.set_result(None)
        self._renewed = None
