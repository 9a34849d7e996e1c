"""A term: one leader's tenure as the app sees it, with its deadline on the monotonic clock."""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

Status = dict[str, Any]


class Flag(Protocol):
    """threading.Event or asyncio.Event: what the blocking and asyncio flavours share of them."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class TermEnded(Exception):
    """The term the work ran in ended: its deadline passed on the monotonic clock, the sidecar
    reported standby or another term, or it asked the app to drain for a graceful hand-over."""


class StaleToken(TermEnded):
    """The storage refused the write: a newer term's token reached it first (PostgreSQL SQLSTATE
    LF001, or the Redis fence). The transaction can only roll back."""


@dataclass(frozen=True)
class Term:
    """One leader's term. The same term renewed is an equal `(lease, lease_uid, fencing_token)`
    with a later `valid_until_monotonic`.

    `valid_until_monotonic` is on this process's `time.monotonic()` clock. In a pod the sidecar and
    the app share the node's CLOCK_MONOTONIC, so the sidecar's `valid_until_monotonic` is used as
    is. `from_status` takes, in this order of precedence:

    1. `valid_until_monotonic` from the status; when the moment the question was asked is known
       (`asked_at_monotonic`), never later than `asked_at_monotonic + valid_for_seconds` (that bound
       holds on any clock: the answer was computed after the question was asked);
    2. else `valid_for_seconds` counted from `asked_at_monotonic` (or from now, if unknown);
    3. else (a sidecar before these fields) `valid_until` (wall clock, RFC 3339) turned into a
       monotonic deadline by the difference from `time.time()` now: wrong by as much as the wall
       clock is stepped, which is why it comes last.

    A status that carries `valid_until_monotonic` as null has no deadline: no term.
    """

    identity: str
    lease: str
    fencing_token: int
    valid_until_monotonic: float
    lease_uid: str | None = None

    def remaining_s(self, now: float | None = None) -> float:
        """Seconds left of this term on the monotonic clock (0 when ended)."""
        return max(0.0, self.valid_until_monotonic - (time.monotonic() if now is None else now))

    def is_valid(self, now: float | None = None) -> bool:
        return self.valid_until_monotonic > (time.monotonic() if now is None else now)

    def same_term(self, other: Term | None) -> bool:
        """Whether `other` is this term (perhaps renewed to a later deadline)."""
        if other is None or (self.lease, self.fencing_token) != (other.lease, other.fencing_token):
            return False
        # The Lease's uid, when both know it: a Lease deleted and re-created is another term.
        return self.lease_uid is None or other.lease_uid is None or self.lease_uid == other.lease_uid

    @classmethod
    def from_status(cls, status: Status | None, asked_at_monotonic: float | None = None,
                    now_monotonic: float | None = None) -> Term | None:
        """The term a `/leader` answer describes, or None unless it says this pod leads."""
        if not isinstance(status, dict) or status.get("is_leader") is not True:
            return None
        token = status.get("fencing_token")
        if not isinstance(token, int) or isinstance(token, bool):
            return None
        deadline = status_deadline_monotonic(status, asked_at_monotonic, now_monotonic)
        if deadline is None:
            return None
        return cls(identity=str(status.get("identity") or ""), lease=str(status.get("lease") or ""),
                   fencing_token=token, valid_until_monotonic=deadline,
                   lease_uid=status.get("lease_uid") if isinstance(status.get("lease_uid"), str) else None)

    def ended_at(self, now: float | None = None) -> Term:
        """This term with its deadline brought forward to `now` (a newer status ended it)."""
        now = time.monotonic() if now is None else now
        if self.valid_until_monotonic <= now:
            return self
        return Term(self.identity, self.lease, self.fencing_token, now, self.lease_uid)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def status_deadline_monotonic(status: Status, asked_at_monotonic: float | None = None,
                              now_monotonic: float | None = None) -> float | None:
    """The deadline of a leader's status on this process's monotonic clock (see `Term`)."""
    now = time.monotonic() if now_monotonic is None else now_monotonic
    until_mono = _number(status.get("valid_until_monotonic"))
    if until_mono is None and "valid_until_monotonic" in status:
        return None  # a sidecar that knows the field and sends no deadline: no term (the safe side)
    valid_for = _number(status.get("valid_for_seconds"))
    counted_from = now if asked_at_monotonic is None else asked_at_monotonic
    from_valid_for = None if valid_for is None else counted_from + valid_for
    if until_mono is not None:
        if asked_at_monotonic is not None and from_valid_for is not None:
            return min(until_mono, from_valid_for)
        return until_mono
    if from_valid_for is not None:
        return from_valid_for
    wall = status.get("valid_until")
    if isinstance(wall, str):
        try:
            until_wall = datetime.fromisoformat(wall.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
        return now + (until_wall - time.time())
    return None


# The term the running work belongs to: set by leading() and the scheduler integrations. It holds a
# provider rather than a Term so that a renewal seen by the watcher moves the deadline the work sees.
_current: contextvars.ContextVar[Callable[[], Term | None] | None] = contextvars.ContextVar(
    "lease_sidecar_client_current_term", default=None)


def current_term() -> Term | None:
    """The term the running work belongs to (its latest known deadline), or None outside one."""
    provider = _current.get()
    return provider() if provider is not None else None


@contextlib.contextmanager
def bind_term(term: Term | Callable[[], Term | None] | None) -> Iterator[None]:
    """Makes `current_term()` answer `term` (a Term, or a callable giving the latest) inside the
    block, in this context only: for integrations that run work in a term of their own."""
    provider = term if callable(term) or term is None else (lambda: term)
    token = _current.set(provider)
    try:
        yield
    finally:
        _current.reset(token)
