"""The election's public face: a versioned snapshot (the seed's HeartbeatInfo, grown up).

`version` increases whenever role, holder or fencing token changes. Waiters (long-poll, event
streams) share one future per version, so ten thousand idle waiters cost ten thousand small
coroutines and nothing per change beyond waking them.
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
                 app: AppLiveness | None = None) -> None:
        self._elector = elector
        self._app = app or AppLiveness()
        self._clock = clock
        self.lease = lease
        self._stale_after_s = stale_after_s
        self.version = 0
        self._key: tuple[Any, ...] | None = None
        self._app_alive: bool | None = None
        self._changed: asyncio.Future[None] | None = None
        self._listeners: list[Callable[[Snapshot], None]] = []
        self.last_heartbeat_at: str | None = None

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        """Called synchronously with the new snapshot on every version change."""
        self._listeners.append(listener)

    def snapshot(self, force_publish: bool = False) -> Snapshot:
        """Fresh at the moment of the call: a leader past its deadline already reads standby.
        Publishes (version bump, waiters, listeners) whenever role, holder or token changed, and
        tells the listeners alone when the app's liveness changed."""
        now = self._clock.now()
        view = self._elector.view(now.mono)
        key = (view.role, view.holder, view.fencing_token)
        changed = key != self._key
        if changed:
            self._key = key
            self.version += 1
        body: Snapshot = {
            "role": str(view.role),
            "is_leader": view.role is BeatRole.LEADER,
            "identity": self._elector.identity,
            "holder": view.holder,
            "lease": self.lease,
            "fencing_token": view.fencing_token,
            "term_started_at": rfc3339(view.term_started.wall) if view.term_started else None,
            "valid_until": rfc3339(wall_at(now, view.valid_until_mono)) if view.valid_until_mono else None,
            "observed_at": rfc3339(view.observed.wall) if view.observed else None,
            "version": self.version,
            "heartbeat_at": self.last_heartbeat_at,
            "stale_after_seconds": self._stale_after_s,
            "sidecar_version": __version__,
            "app": self._app_section(now),
        }
        if changed:
            self._wake_waiters()
        # The app's liveness does not change the version (the role did not change), but listeners
        # hear of it at once: the member record, which readiness and successor choice depend on.
        app_changed = body["app"]["alive"] != self._app_alive
        self._app_alive = body["app"]["alive"]
        if app_changed and body["app"]["required"]:
            self._log_app_liveness(body["app"])
        if changed or force_publish or app_changed:
            for listener in self._listeners:
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

    def _wake_waiters(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None
