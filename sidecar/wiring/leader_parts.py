"""The optional parts that tell the cluster who leads: the leader Service, Events, the pod label.

Each follows the published role (a StatusBoard listener) and runs its own task, so the election
never waits for them; the one exception is on purpose: before a release is written, the leader
leaves the leader Service (bounded), so traffic stops reaching it before anyone else can lead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio.client import ApiClient

from sidecar.core.announce import Announcement
from sidecar.core.clock import Clock
from sidecar.core.election import Elector, TermEnd
from sidecar.core.lock import LeaseStore, Versioned, WatchEvent
from sidecar.core.record import LeaseRecord
from sidecar.core.succession import Member, revision_from_pod_name
from sidecar.engine.status import Snapshot, StatusBoard
from sidecar.kube.endpoints import LeaderEndpoints, LeaderRoute
from sidecar.kube.events import LeaseEvents, RoleAnnouncer
from sidecar.kube.pod_label import PodRoleLabel
from sidecar.publish.handover_api import HandoverRefused
from sidecar.wiring.settings import RunSettings

log = logging.getLogger("lease_sidecar.wiring.leader_parts")

SHUTDOWN_SEND_S = 1.0
"""At shutdown, queued Events and the pod label get this long."""


@dataclass
class LeaderParts:
    route: LeaderRoute | None = None
    events: LeaseEvents | None = None
    label: PodRoleLabel | None = None
    loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=dict)

    def announce(self, announcement: Announcement) -> None:
        if self.events is not None:
            self.events.announce(announcement)

    async def before_release(self, budget_s: float) -> None:
        if self.route is not None:
            try:
                await asyncio.wait_for(self.route.withdraw_now(), budget_s)
            except TimeoutError:
                log.error("leaving the leader Service took too long; releasing anyway",
                          extra={"event": "leader_service_timeout"})

    async def shut_down(self) -> None:
        """After the release: the label says standby, queued Events go out (bounded, best effort)."""
        jobs: list[Awaitable[None]] = []
        if self.label is not None:
            jobs.append(asyncio.wait_for(self.label.stand_down(), SHUTDOWN_SEND_S))
        if self.events is not None:
            jobs.append(self.events.drain(SHUTDOWN_SEND_S))
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, TimeoutError):
                log.error("shutdown step failed", extra={"event": "leader_parts_failed", "error": repr(outcome)})


def build_leader_parts(settings: RunSettings, api_client: ApiClient, namespace: str, identity: str, board: StatusBoard,
                       clock: Clock, term_end: Callable[[], TermEnd | None], timeout_s: float) -> LeaderParts:
    parts = LeaderParts()
    if settings.leader_service:
        endpoints = LeaderEndpoints(api_client, namespace, settings.leader_service, identity,
                                    settings.resolved_pod_ip(), os.environ.get("POD_NAME"), timeout_s)
        parts.route = LeaderRoute(endpoints, board.snapshot)
        board.subscribe(parts.route.on_snapshot)
        parts.loops["leader_service"] = parts.route.run
    if settings.events:
        def now() -> Any:
            moment = clock.now()
            return moment.mono, moment.wall

        parts.events = LeaseEvents(api_client, namespace, settings.lease_name, identity, now, timeout_s)
        board.subscribe(RoleAnnouncer(parts.events, term_end).on_snapshot)
        parts.loops["events"] = parts.events.run
    if settings.label_pod:
        parts.label = PodRoleLabel(api_client, namespace, os.environ["POD_NAME"], timeout_s)
        board.subscribe(parts.label.on_snapshot)
        parts.loops["pod_label"] = parts.label.run
    return parts


class ReleaseFirst:
    """A lock backend that runs `before_release` ahead of every release write (an update naming no
    holder), within half of that write's timeout; everything else passes straight through."""

    def __init__(self, backend: LeaseStore, before_release: Callable[[float], Awaitable[None]]) -> None:
        self._backend = backend
        self._before_release = before_release
        self.key = backend.key

    @property
    def absent_version(self) -> str | None:
        return self._backend.absent_version

    async def get(self, timeout_s: float) -> Versioned | None:
        return await self._backend.get(timeout_s)

    async def create(self, record: LeaseRecord, timeout_s: float) -> Versioned:
        return await self._backend.create(record, timeout_s)

    async def update(self, record: LeaseRecord, expected_version: str, timeout_s: float) -> Versioned:
        if record.is_free:
            log.info("releasing the lease", extra={"event": "release", "successor": record.successor or None})
            started = asyncio.get_running_loop().time()
            await self._before_release(timeout_s / 2)
            timeout_s -= asyncio.get_running_loop().time() - started
        return await self._backend.update(record, expected_version, max(0.1, timeout_s))

    def watch(self, idle_timeout_s: float, request_timeout_s: float) -> AsyncIterator[WatchEvent]:
        return self._backend.watch(idle_timeout_s, request_timeout_s)


def handover_requester(elector: Elector, clock: Clock, board: StatusBoard, wake: Callable[[], None],
                       parts: LeaderParts) -> Callable[[str], Snapshot]:
    """POST /leader/handover: the Elector takes the request (or refuses it), the election loop is
    woken to release at once, and the request is announced."""

    def request(successor: str) -> Snapshot:
        if successor == elector.identity:
            raise HandoverRefused(f"{successor} is this candidate: name another one")
        if not elector.request_handover(successor, clock.now()):
            raise HandoverRefused("not the leader: ask the leader's sidecar, or use `lease-sidecar handover`")
        wake()  # the election loop releases now; the role change announces it
        return board.snapshot()

    return request


class SuccessorView:
    """Feeds the Elector the members view for choosing a successor (a StatusBoard listener: every
    change and heartbeat). `rows(now_mono)` is the members table's rows. A member may be named only
    if its record is fresh, it is a candidate (leader or standby), it is not terminating (its
    record says so from its stop signal) nor sitting out a resign, and, when `app_gated` (leading
    needs a live app, --app-heartbeat-ttl), its record says its app is alive now: a member whose
    app never heartbeated or has fallen silent cannot take the lease. With none, the release
    names nobody and is open to all at once."""

    def __init__(self, elector: Elector, clock: Clock, rows: Callable[[float], list[dict[str, Any]]],
                 app_gated: bool = False) -> None:
        self._elector, self._clock, self._rows, self._app_gated = elector, clock, rows, app_gated
        self._first_seen: dict[str, float] = {}
        """When each member now in the view was first seen; members gone from it are forgotten."""

    def on_snapshot(self, _snapshot: Snapshot) -> None:
        now = self._clock.now().mono
        rows = self._rows(now)
        present = {row["identity"] for row in rows}
        for gone in [identity for identity in self._first_seen if identity not in present]:
            del self._first_seen[gone]  # else it grows with every pod ever seen
        members = []
        for row in rows:
            identity = row["identity"]
            app_ok = not self._app_gated or row.get("app_alive") is True
            members.append(Member(identity, bool(row["alive"]), self._first_seen.setdefault(identity, now),
                                  terminating=bool(row.get("terminating")),
                                  revision=revision_from_pod_name(identity),
                                  ready=row.get("role") in ("leader", "standby") and app_ok
                                  and not row.get("sitting_out")))
        self._elector.members = members


def own_revision(identity: str) -> str:
    """POD_REVISION (the chart's Downward API pod-template-hash), else read from the pod name."""
    return os.environ.get("POD_REVISION") or revision_from_pod_name(identity)
