"""Hand-over to a named successor (sans-IO): who is asked for, who is chosen, who may take the lease.

* **Asked for.** The holder releases to a successor when asked locally (`POST /leader/handover`),
  through the Lease (annotation `lease-sidecar.io/handover-to`, written by `lease-sidecar
  handover`), or by `spec.preferredHolder` (Kubernetes' coordinated leader election, or the same
  CLI where the apiserver keeps the field). A request naming the holder itself is no request.
* **Chosen.** Every other graceful release (shutdown, resign, app gone) names a successor too:
  the longest-known standby from the members view that is eligible now (its record fresh, its app
  alive by its own record when leading needs a live app, not sitting out a resign, not
  terminating: `Member.ready` and `Member.terminating`, filled from the record by the wiring),
  preferring, when this pod is being replaced, one of a different pod revision (the new
  ReplicaSet of a rollout). None eligible, or no members known: no successor, and the release is
  open to all at once.
* **Window.** A released record naming a successor (annotation `lease-sidecar.io/successor`) may
  be taken only by that successor for `SUCCESSOR_WINDOW_S`, counted by each candidate's own
  monotonic clock from when it saw the release; after that, by anyone. So a hand-over costs one
  acquisition write and no lost races, and a successor that died costs at most the window.
  `preferredHolder` on a free or expired record is honoured the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.core.record import LeaseRecord

SUCCESSOR_WINDOW_S = 2.0
"""How long only the named successor may take a released lease. A live successor takes it in tens
of milliseconds (it watches the Lease); 2 s leaves room for a loaded node, and is what a dead
successor costs."""


_DEPLOYMENT_POD = re.compile(r"^.+-(?P<hash>[a-z0-9]{6,10})-[a-z0-9]{5}$")


def revision_from_pod_name(name: str) -> str:
    """A Deployment's pod is named `<deployment>-<pod-template-hash>-<5 random>`: the hash, else ""."""
    match = _DEPLOYMENT_POD.match(name)
    return match["hash"] if match else ""


@dataclass(frozen=True)
class Member:
    """A candidate as the members view shows it."""

    identity: str
    alive: bool
    known_since_mono: float
    """When this process first saw the member (its monotonic clock): smaller is longer-lived."""
    terminating: bool = False
    revision: str = ""
    """The pod's revision (its `pod-template-hash`), "" if unknown."""
    ready: bool = True
    """It could take the lease now: a candidate, its app alive (or not gated), not sitting out."""


def requested_successor(record: LeaseRecord, identity: str) -> str | None:
    """Whom the record asks its holder (`identity`) to hand over to, if anyone."""
    for name in (record.handover_to, record.preferred_holder):
        if name and name != identity:
            return name
    return None


def reserved_for(record: LeaseRecord) -> str:
    """The identity a free (released or expired) record is reserved for during the window."""
    return record.successor or record.preferred_holder


def reserved_until(record: LeaseRecord, identity: str, free_since_mono: float) -> float | None:
    """While the record is reserved for someone else: the moment (monotonic) anyone may take it.
    None: `identity` may take it now."""
    successor = reserved_for(record)
    if not successor or successor == identity:
        return None
    return free_since_mono + SUCCESSOR_WINDOW_S


def choose_successor(members: Iterable[Member], identity: str, own_revision: str = "",
                     replacing_self: bool = False) -> str | None:
    """The standby to hand over to, or None. `replacing_self`: this pod is shutting down, so a
    member of another revision (a rollout's new pods) is preferred."""
    eligible = [m for m in members if m.identity != identity and m.alive and m.ready and not m.terminating]
    if replacing_self and own_revision:
        newer = [m for m in eligible if m.revision and m.revision != own_revision]
        eligible = newer or eligible
    if not eligible:
        return None
    return min(eligible, key=lambda m: (m.known_since_mono, m.identity)).identity
