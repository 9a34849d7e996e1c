"""events.k8s.io/v1 Events on the Lease: became leader, lost leadership, released, hand-over requested.

A thin shell around `core.announce`: the policy decides create / extend a series / drop; this
module only sends, from its own task, so the election never waits for an Event.
`kubectl events --for lease/<name>` shows them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient, EventsV1Api

from sidecar.core.announce import (
    REPORTING_CONTROLLER,
    Announcement,
    Create,
    Drop,
    EventPolicy,
    Extend,
    handover_announcement,
    own_end_reason,
    role_change_announcement,
)
from sidecar.core.election import TermEnd
from sidecar.core.record import format_microtime
from sidecar.kube.calls import ApiCallFailed, call_json

log = logging.getLogger("lease_sidecar.kube.events")

HANDING_OVER = "handing over to "
"""How the Elector's loss reason starts when it released to a requested successor."""

_QUEUE_SIZE = 64
"""Announcements waiting to be sent; beyond this they are dropped (the policy bounds them anyway)."""


class LeaseEvents:
    def __init__(self, api_client: ApiClient, namespace: str, lease: str, identity: str,
                 now: Callable[[], tuple[float, datetime]], timeout_s: float,
                 policy: EventPolicy | None = None) -> None:
        """`now` returns (monotonic seconds, wall time)."""
        self.namespace, self.lease, self.identity = namespace, lease, identity
        self._api = EventsV1Api(api_client)
        self._now = now
        self.timeout_s = timeout_s
        self.policy = policy or EventPolicy()
        self._queue: asyncio.Queue[Announcement] = asyncio.Queue(_QUEUE_SIZE)
        self.sent = 0

    def announce(self, announcement: Announcement) -> None:
        """Never blocks, never raises."""
        try:
            self._queue.put_nowait(announcement)
        except asyncio.QueueFull:
            self.policy.dropped += 1

    async def run(self) -> None:
        while True:
            announcement = await self._queue.get()
            await self.send(announcement)

    async def drain(self, timeout_s: float) -> None:
        """Send what is queued (at shutdown), within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self._queue.empty():
                    await self.send(self._queue.get_nowait())
        except TimeoutError:
            pass

    async def send(self, announcement: Announcement) -> None:
        mono, wall = self._now()
        decision = self.policy.decide(announcement.reason, mono)
        if isinstance(decision, Drop):
            log.info("event dropped by the rate limit", extra={"event": "k8s_event_dropped",
                                                               "reason": announcement.reason})
            return
        try:
            if isinstance(decision, Create):
                name = f"{self.lease}.{int(wall.timestamp() * 1e9):x}"
                await call_json("create event", self.timeout_s, self._api.create_namespaced_event, self.namespace,
                                self._body(name, announcement, wall))
                self.policy.created(announcement.reason, name, mono)
            elif isinstance(decision, Extend):
                patch = {"series": {"count": decision.count, "lastObservedTime": format_microtime(wall)},
                         "note": announcement.note[:1024]}
                await call_json("patch event", self.timeout_s, self._api.patch_namespaced_event, decision.name,
                                self.namespace, patch, _content_type="application/merge-patch+json")
            self.sent += 1
        except ApiCallFailed as error:
            self.policy.failed(announcement.reason)
            log.warning("event not recorded", extra={"event": "k8s_event_failed", "reason": announcement.reason,
                                                     "error": str(error)})

    def _body(self, name: str, announcement: Announcement, wall: datetime) -> dict[str, Any]:
        return {
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": name, "namespace": self.namespace},
            "eventTime": format_microtime(wall),
            "reportingController": REPORTING_CONTROLLER, "reportingInstance": self.identity[:128],
            "action": announcement.action, "reason": announcement.reason, "type": announcement.type,
            "note": announcement.note[:1024],
            "regarding": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": self.lease,
                          "namespace": self.namespace},
        }


class RoleAnnouncer:
    """A StatusBoard listener that turns role changes into announcements. A step-down is announced
    with the end reason of the term it ended (as the log does), read from the Elector's view: at a
    deadline the view knows the term is over before the Elector has acted on it."""

    def __init__(self, events: LeaseEvents, term_end: Callable[[], TermEnd | None]) -> None:
        self.events = events
        self._term_end = term_end
        self._was_leader = False
        self._token: int | None = None
        """The token of the term last announced as leading."""

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        leading = bool(snapshot["is_leader"])
        reason = None if leading else own_end_reason(self._term_end(), self._token)
        announcement = role_change_announcement(self._was_leader, leading, snapshot["identity"],
                                                snapshot["fencing_token"], reason)
        self._was_leader = leading
        if leading:
            self._token = snapshot["fencing_token"]
        if announcement is None:
            return
        reason = reason or ""
        if not leading and reason.startswith(HANDING_OVER):
            self.events.announce(handover_announcement(snapshot["identity"], reason.removeprefix(HANDING_OVER),
                                                       "local API, lease annotation or preferredHolder"))
        self.events.announce(announcement)
