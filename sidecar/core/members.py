"""The members view (sans-IO): one small Lease per candidate, and who is alive, by observation.

Each candidate (`--members`) keeps a Lease of its own, labelled with the election's name:
`holderIdentity` = its identity, `leaseDurationSeconds` = the heartbeat TTL, renewed every
heartbeat interval, annotations carrying its role and its app's last heartbeat and info. It is
deleted on a clean shutdown.

Aliveness follows the election's rule, never the clocks of other nodes: a member is alive while
its record last *changed* (a new resourceVersion, as this process saw it) less than its
`leaseDurationSeconds` ago, by this process's monotonic clock. `renewTime` is shown, never judged.
A record stale for `REMOVE_AFTER_DURATIONS` durations (a crashed member) may be deleted by anyone,
with the version it was seen at as a precondition, so a member that came back is never removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sidecar.core.record import format_microtime, parse_microtime

ELECTION_LABEL = "lease-sidecar.io/election"
"""On every member Lease; its value is the election Lease's name (hashed if longer than 63)."""
ROLE_ANNOTATION = "lease-sidecar.io/role"
APP_HEARTBEAT_ANNOTATION = "lease-sidecar.io/app-heartbeat-at"
APP_INFO_ANNOTATION = "lease-sidecar.io/app-info"
APP_ALIVE_ANNOTATION = "lease-sidecar.io/app-alive"
"""The member's own judgment of its app (its --app-heartbeat-ttl); absent without a TTL."""
TERMINATING_ANNOTATION = "lease-sidecar.io/terminating"
"""`true` once the member got its stop signal (SIGTERM): it is going away and must not be named
successor. Absent otherwise."""
SITTING_OUT_ANNOTATION = "lease-sidecar.io/sitting-out"
"""`true` while the member sits out a resign (it would not take the lease). Absent otherwise."""
MEMBER_INFIX = "-member-"
REMOVE_AFTER_DURATIONS = 10
ROLES = ("leader", "standby", "unknown")
_UNSAFE = re.compile(r"[^a-z0-9-]+")


def election_label_value(lease_name: str) -> str:
    """A label value is at most 63 characters; longer Lease names get a stable hashed form."""
    if len(lease_name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", lease_name):
        return lease_name
    digest = hashlib.sha256(lease_name.encode()).hexdigest()[:10]
    return f"{_UNSAFE.sub('-', lease_name.lower())[:50].strip('-.')}-{digest}"


def member_lease_name(lease_name: str, identity: str) -> str:
    """`<lease>-member-<identity>`, a valid DNS subdomain of at most 253 characters. An identity
    that is not already DNS-safe is folded and suffixed with a hash, so two never collide."""
    safe = _UNSAFE.sub("-", identity.lower()).strip("-")
    if safe != identity or len(lease_name) + len(MEMBER_INFIX) + len(safe) > 253:
        digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
        room = 253 - len(lease_name) - len(MEMBER_INFIX) - len(digest) - 1
        safe = f"{safe[:max(0, room)].strip('-')}-{digest}".strip("-")
    return f"{lease_name}{MEMBER_INFIX}{safe}"


@dataclass(frozen=True)
class MemberRecord:
    """What one member publishes about itself."""

    identity: str
    role: str
    duration_s: int
    info: dict[str, Any]
    app_heartbeat_at: str | None = None
    app_alive: bool | None = None
    """As the member itself judges its app (None: no --app-heartbeat-ttl, the app is not consulted)."""
    renew_time: datetime | None = None
    """Written for people and kubectl; never compared with the local clock."""
    terminating: bool = False
    """The member got its stop signal: never a successor."""
    sitting_out: bool = False
    """The member sits out a resign: not a successor while it does."""

    def to_lease(self, name: str, namespace: str, lease_name: str) -> dict[str, Any]:
        annotations = {ROLE_ANNOTATION: self.role, APP_INFO_ANNOTATION: json.dumps(self.info, sort_keys=True)}
        if self.app_heartbeat_at:
            annotations[APP_HEARTBEAT_ANNOTATION] = self.app_heartbeat_at
        if self.app_alive is not None:
            annotations[APP_ALIVE_ANNOTATION] = "true" if self.app_alive else "false"
        if self.terminating:
            annotations[TERMINATING_ANNOTATION] = "true"
        if self.sitting_out:
            annotations[SITTING_OUT_ANNOTATION] = "true"
        spec: dict[str, Any] = {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s}
        if self.renew_time is not None:
            spec["renewTime"] = format_microtime(self.renew_time)
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {ELECTION_LABEL: election_label_value(lease_name)},
                             "annotations": annotations},
                "spec": spec}

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> MemberRecord:
        """Tolerant of anything another writer may have left."""
        spec = lease.get("spec") or {}
        annotations = (lease.get("metadata") or {}).get("annotations") or {}
        try:
            info = json.loads(annotations.get(APP_INFO_ANNOTATION) or "{}")
        except ValueError:
            info = {}
        role = annotations.get(ROLE_ANNOTATION)
        duration = spec.get("leaseDurationSeconds")
        return cls(identity=spec.get("holderIdentity") if isinstance(spec.get("holderIdentity"), str) else "",
                   role=role if role in ROLES else "unknown",
                   duration_s=duration if isinstance(duration, int) and not isinstance(duration, bool) else 0,
                   info=info if isinstance(info, dict) else {},
                   app_heartbeat_at=annotations.get(APP_HEARTBEAT_ANNOTATION),
                   app_alive={"true": True, "false": False}.get(annotations.get(APP_ALIVE_ANNOTATION, "")),
                   renew_time=parse_microtime(spec.get("renewTime")),
                   terminating=annotations.get(TERMINATING_ANNOTATION) == "true",
                   sitting_out=annotations.get(SITTING_OUT_ANNOTATION) == "true")


def member_duration_s(heartbeat_ttl_s: float) -> int:
    """leaseDurationSeconds is whole seconds: the heartbeat TTL rounded up."""
    return max(1, math.ceil(heartbeat_ttl_s))


@dataclass
class _Seen:
    record: MemberRecord
    version: str
    changed_mono: float
    observed_wall: datetime


class MemberTable:
    """Every member Lease as this process observed it. Not thread-safe; call from one task."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def observe(self, now_mono: float, now_wall: datetime, name: str, record: MemberRecord | None,
                version: str = "") -> None:
        """A watch event or list item; None: the Lease was deleted."""
        if record is None:
            self._seen.pop(name, None)
            return
        seen = self._seen.get(name)
        if seen is None or seen.version != version:
            self._seen[name] = _Seen(record, version, now_mono, now_wall)
        else:
            seen.observed_wall = now_wall

    def replace_all(self, now_mono: float, now_wall: datetime, items: dict[str, tuple[MemberRecord, str]]) -> None:
        """A fresh list: members absent from it are gone; unchanged ones keep their clocks."""
        for name in set(self._seen) - set(items):
            del self._seen[name]
        for name, (record, version) in items.items():
            self.observe(now_mono, now_wall, name, record, version)

    def version_of(self, name: str) -> str | None:
        seen = self._seen.get(name)
        return seen.version if seen else None

    def alive(self, name: str, now_mono: float) -> bool:
        seen = self._seen.get(name)
        return seen is not None and now_mono - seen.changed_mono < seen.record.duration_s

    def removable(self, now_mono: float) -> list[tuple[str, str]]:
        """(name, version) of records stale for REMOVE_AFTER_DURATIONS of their durations."""
        return [(name, seen.version) for name, seen in self._seen.items()
                if now_mono - seen.changed_mono >= REMOVE_AFTER_DURATIONS * max(1, seen.record.duration_s)]

    def rows(self, now_mono: float) -> list[dict[str, Any]]:
        rows = []
        for name, seen in sorted(self._seen.items(), key=lambda item: item[1].record.identity):
            rows.append({"identity": seen.record.identity, "role": seen.record.role,
                         "alive": self.alive(name, now_mono), "info": seen.record.info,
                         "app_heartbeat_at": seen.record.app_heartbeat_at, "app_alive": seen.record.app_alive,
                         "terminating": seen.record.terminating, "sitting_out": seen.record.sitting_out,
                         "observed_at": format_microtime(seen.observed_wall), "lease": name})
        return rows

    def counts(self, now_mono: float) -> dict[str, int]:
        """Alive members by role, and `stale` ones (records not renewed in time, by observation)."""
        counts = dict.fromkeys((*ROLES, "stale"), 0)
        for name, seen in self._seen.items():
            counts[seen.record.role if self.alive(name, now_mono) else "stale"] += 1
        return counts


class MemberStore(Protocol):
    """The member Leases of one election. Every call is bounded by `timeout_s`."""

    async def list(self, timeout_s: float) -> tuple[dict[str, tuple[MemberRecord, str]], str]:
        """Every member record by Lease name, and the list's version to watch from."""

    async def put(self, name: str, record: MemberRecord, version: str | None, timeout_s: float) -> str:
        """Create (version None) or replace (compare-and-swap on version); returns the new version.
        Raises core.lock.Conflict when the version is stale or the record already exists."""

    async def delete(self, name: str, version: str | None, timeout_s: float) -> None:
        """Delete, if still at `version` (None: whatever it is). Missing is fine."""

    def watch(self, version: str, idle_timeout_s: float) -> AsyncIterator[tuple[str, MemberRecord | None, str]]:
        """(name, record or None when deleted, version) for every change after `version`. Ends
        quietly after `idle_timeout_s`; raises core.lock.LockError when broken or expired."""
