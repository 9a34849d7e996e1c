"""Who may write the leader Service's EndpointSlice, and what (sans-IO).

The slice is fenced by the election's token: it records the token of the term that last wrote it
(annotation `lease-sidecar.io/fencing-token`). Contract:

* A term publishes by setting the endpoints to exactly its own address and the token to its own.
  It may do so only if the stored token is not newer than its own: a writer of an older term never
  overwrites a newer one (a paused or partitioned ex-leader waking up is refused).
* A term withdraws by emptying the endpoints, only while the slice still records its own token and
  its own address; the token stays, so an older term can never write over the withdrawal either.
* Every write is a compare-and-swap on the slice's resourceVersion, decided from a fresh read; a
  conflict means: read again and decide again. So the slice never holds more than one address.
"""

from __future__ import annotations

from dataclasses import dataclass

SLICE_FENCING_ANNOTATION = "lease-sidecar.io/fencing-token"
SLICE_HOLDER_ANNOTATION = "lease-sidecar.io/holder"
MANAGED_BY = "lease-sidecar.io"
"""Value of the slice's `endpointslice.kubernetes.io/managed-by` label: the EndpointSlice controller
leaves slices managed by anyone else alone."""


@dataclass(frozen=True)
class SliceState:
    """The slice as read: its fencing token (None if unset or unreadable) and its addresses."""

    token: int | None
    addresses: tuple[str, ...]
    version: str


@dataclass(frozen=True)
class Publish:
    """Write exactly `address` with `token`; `expected_version` None: create the slice."""

    address: str
    token: int
    expected_version: str | None


@dataclass(frozen=True)
class Withdraw:
    """Write no address, keeping `token`."""

    token: int
    expected_version: str


@dataclass(frozen=True)
class Refuse:
    """A newer term owns the slice: do nothing."""

    stored_token: int


@dataclass(frozen=True)
class NothingToDo:
    pass


SliceAction = Publish | Withdraw | Refuse | NothingToDo


def publish_action(current: SliceState | None, token: int, address: str) -> SliceAction:
    """The term `token` wants its `address` to be the only one."""
    if current is None:
        return Publish(address, token, None)
    if current.token is not None and current.token > token:
        return Refuse(current.token)
    if current.token == token and current.addresses == (address,):
        return NothingToDo()
    return Publish(address, token, current.version)


def withdraw_action(current: SliceState | None, token: int, address: str) -> SliceAction:
    """The term `token` steps down: empty the slice if, and only if, it still routes to this term."""
    if current is None or not current.addresses:
        return NothingToDo()
    if current.token != token or address not in current.addresses:
        return Refuse(current.token or 0) if (current.token or 0) > token else NothingToDo()
    return Withdraw(token, current.version)
