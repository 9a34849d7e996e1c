"""Who may write the leader Service's EndpointSlice, and what (sans-IO).

The slice is fenced by the election's token *within one Lease*: it records the token of the term
that last wrote it (annotation `lease-sidecar.io/fencing-token`) beside the Lease's UID
(`lease-sidecar.io/lease-uid`) and the UIDs it has retired (`lease-sidecar.io/retired-lease-uids`).
A Lease's UID is its epoch: tokens are comparable only within one, since a Lease deleted and
created again (the documented token reset) or an election renamed (`--lease-name`) starts its
tokens afresh. Contract:

* A term publishes by setting the endpoints to exactly its own address and the token and UID to
  its own. Within its epoch (the slice records the same UID) it may do so only if the stored token
  is not newer than its own: a writer of an older term never overwrites a newer one (a paused or
  partitioned ex-leader waking up is refused).
* A UID the slice has never recorded is a new epoch: it takes the slice whatever the token, and the
  UID it replaces is retired. A retired UID is refused for good, so after a reset or a rename the
  old election, if it is still running, can never take the slice back, and two elections sharing a
  Service cannot overwrite it in turn: the newer one keeps it.
* A term withdraws by emptying the endpoints, only while the slice still records its own token, its
  own address and its own epoch; token and UID stay, so an older term can never write over the
  withdrawal either.
* A slice whose labels, ports or endpoint conditions were edited by hand (`intact` false, judged by
  the writer against what it would write) is rewritten by its current term.
* A writer that does not know its Lease's UID (none observed yet), or a slice written before UIDs
  were recorded, falls back to comparing tokens alone.
* Every write is a compare-and-swap on the slice's resourceVersion, decided from a fresh read; a
  conflict means: read again and decide again. So the slice never holds more than one address.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SLICE_FENCING_ANNOTATION = "lease-sidecar.io/fencing-token"
SLICE_HOLDER_ANNOTATION = "lease-sidecar.io/holder"
SLICE_LEASE_UID_ANNOTATION = "lease-sidecar.io/lease-uid"
SLICE_RETIRED_UIDS_ANNOTATION = "lease-sidecar.io/retired-lease-uids"
"""Comma-separated, oldest first, at most RETIRED_UIDS_KEPT."""
RETIRED_UIDS_KEPT = 16
"""Resets and renames are rare operator actions: this many covers any that still has a live writer."""
MANAGED_BY = "lease-sidecar.io"
"""Value of the slice's `endpointslice.kubernetes.io/managed-by` label: the EndpointSlice controller
leaves slices managed by anyone else alone."""


@dataclass(frozen=True)
class SliceState:
    """The slice as read: its fencing token (None if unset or unreadable) and its addresses."""

    token: int | None
    addresses: tuple[str, ...]
    version: str
    lease_uid: str | None = None
    """The epoch of the term that last wrote it; None on a slice written before UIDs were recorded."""
    retired_uids: tuple[str, ...] = ()
    intact: bool = True
    """Labels, ports and endpoint conditions are what its writer would write (no hand edit)."""


@dataclass(frozen=True)
class Publish:
    """Write exactly `address` with `token` and `lease_uid` (None: leave the recorded one) and the
    `retired_uids`; `expected_version` None: create the slice."""

    address: str
    token: int
    expected_version: str | None
    lease_uid: str | None = None
    retired_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Withdraw:
    """Write no address, keeping `token` (and the slice's epoch)."""

    token: int
    expected_version: str


@dataclass(frozen=True)
class Refuse:
    """A newer term, or a newer epoch, owns the slice: do nothing."""

    stored_token: int
    reason: str = field(default="", compare=False)


@dataclass(frozen=True)
class NothingToDo:
    pass


SliceAction = Publish | Withdraw | Refuse | NothingToDo


def publish_action(current: SliceState | None, token: int, address: str, lease_uid: str | None = None) -> SliceAction:
    """The term `token` of the Lease `lease_uid` wants its `address` to be the only one."""
    if current is None:
        return Publish(address, token, None, lease_uid)
    if lease_uid is not None and lease_uid in current.retired_uids:
        return Refuse(current.token or 0, f"lease uid {lease_uid} was retired by a newer lease")
    if lease_uid is not None and current.lease_uid is not None and current.lease_uid != lease_uid:
        # A new epoch: the Lease was created again or the election renamed; the old one retires.
        retired = (*(uid for uid in current.retired_uids if uid != current.lease_uid), current.lease_uid)
        return Publish(address, token, current.version, lease_uid, retired[-RETIRED_UIDS_KEPT:])
    if current.token is not None and current.token > token:
        return Refuse(current.token, "a newer term of this lease wrote it")
    uid = lease_uid or current.lease_uid
    if current.token == token and current.addresses == (address,) and current.intact and current.lease_uid == uid:
        return NothingToDo()
    return Publish(address, token, current.version, uid, current.retired_uids)


def withdraw_action(current: SliceState | None, token: int, address: str, lease_uid: str | None = None) -> SliceAction:
    """The term `token` steps down: empty the slice if, and only if, it still routes to this term."""
    if current is None or not current.addresses:
        return NothingToDo()
    if lease_uid is not None and lease_uid in current.retired_uids:
        return Refuse(current.token or 0, f"lease uid {lease_uid} was retired by a newer lease")
    if lease_uid is not None and current.lease_uid is not None and current.lease_uid != lease_uid:
        return NothingToDo()  # another epoch routes there: not ours to empty
    if current.token != token or address not in current.addresses:
        return Refuse(current.token or 0) if (current.token or 0) > token else NothingToDo()
    return Withdraw(token, current.version)
