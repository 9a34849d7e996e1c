"""The election as a pure state machine (sans-IO): fed moments and observations, returns actions.

Every rule about expiry, hand-over and terms lives here and nowhere else:

* A lease held by someone else expires `leaseDurationSeconds` after *this process last saw the
  record change*, by its own monotonic clock. `renewTime` is never compared with the local clock,
  so clock skew between nodes cannot make two leaders.
* A leader is leader only until `renew_deadline` after the *start* of its last successful write.
  Any other candidate saw that write no earlier than it started, so it cannot take the lease
  before `start + lease_ttl`, which is later: the old leader has already stepped down.
* Every new term carries a fencing token larger than any stored in the Lease or seen by this
  process. A record that names our identity with a token we did not write (a previous life, or a
  duplicate process) is treated like anyone else's: it must expire first.

The async driver (`heartbeat.BeatHeartbeat`) performs the actions and feeds the results back.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime

from sidecar.core.config import ElectionConfig
from sidecar.core.lock import Versioned
from sidecar.core.record import RELEASED_DURATION_S, LeaseRecord


class BeatRole(enum.StrEnum):
    LEADER = "leader"
    STANDBY = "standby"
    UNKNOWN = "unknown"
    """Before the first observation of the lease, and after shutdown."""


@dataclass(frozen=True)
class Moment:
    """`mono` drives every decision; `wall` is only written into records and shown to people."""

    mono: float
    wall: datetime


@dataclass(frozen=True)
class Read:
    timeout_s: float


@dataclass(frozen=True)
class Write:
    kind: str
    """"acquire", "renew" or "release"."""
    record: LeaseRecord
    expected_version: str | None
    """None: create the Lease (it was observed absent)."""
    timeout_s: float


@dataclass(frozen=True)
class Wait:
    until_mono: float


@dataclass(frozen=True)
class Done:
    """Closed and, if it led, released (or gave up releasing)."""


Action = Read | Write | Wait | Done


@dataclass
class HeartbeatStats:
    """The seed's six counters; monotonically increasing, read by the metrics collector."""

    heartbeats_sent: int = 0
    leader_elections_won: int = 0
    leader_elections_lost: int = 0
    """Acquisition attempts that lost a race, plus terms lost involuntarily."""
    lease_renewals: int = 0
    lease_renewal_failures: int = 0
    failovers_detected: int = 0
    """A standby found another holder's lease expired or released and moved to take it."""


@dataclass(frozen=True)
class Term:
    fencing_token: int
    started: Moment
    last_renew_started_mono: float


@dataclass(frozen=True)
class ElectionView:
    """What publishers show. Times are monotonic; the driver converts them for people."""

    role: BeatRole
    holder: str | None
    fencing_token: int | None
    term_started: Moment | None
    valid_until_mono: float | None
    observed: Moment | None
    lease_observed: bool


class Elector:
    """One candidate's view of one lease. Not thread-safe; call from one task."""

    MAX_RELEASE_ATTEMPTS = 3

    def __init__(self, identity: str, config: ElectionConfig) -> None:
        if not identity:
            raise ValueError("identity: must not be empty")
        self.identity = identity
        self.config = config
        self.stats = HeartbeatStats()
        self.last_loss_reason: str | None = None
        self._observed: Versioned | None = None
        self._observed_ever = False
        self._observed_changed_mono = 0.0
        self._last_observation: Moment | None = None
        self._term: Term | None = None
        self._held_token: int | None = None
        """Token of the record this process last wrote as holder, while the Lease still shows it.
        A record naming our identity with any other token is someone else's (a previous life, or
        a duplicate process with our identity) and must expire before we take it."""
        self._highest_token = 0
        self._maybe_written: int | None = None
        """Token of an acquisition whose outcome is unknown (timeout): ours if a read shows it."""
        self._needs_read = True
        self._failures = 0
        self._retry_at_mono = 0.0
        self._failover_counted_for: str | None = None
        self._closing = False
        self._release_attempts = 0
        self._done = False
        self._echo_pending: str | None = None
        self._stream_versions: deque[str] = deque(maxlen=32)
        self.write_generation = 0
        """Counts successful writes; a list sent before one of them landed may be stale."""

    # ------------------------------------------------------------------ queries

    def is_leader(self, now_mono: float) -> bool:
        return self._term is not None and not self._closing and now_mono < self.valid_until_mono

    @property
    def valid_until_mono(self) -> float:
        if self._term is None:
            return float("-inf")
        return self._term.last_renew_started_mono + self.config.renew_deadline

    def view(self, now_mono: float) -> ElectionView:
        leading = self.is_leader(now_mono)
        if leading:
            role = BeatRole.LEADER
        elif self._done or not self._observed_ever:
            role = BeatRole.UNKNOWN
        else:
            role = BeatRole.STANDBY
        holder = self._observed.record.holder or None if self._observed else None
        term = self._term if leading else None
        return ElectionView(
            role=role,
            holder=holder,
            fencing_token=term.fencing_token if term else None,
            term_started=term.started if term else None,
            valid_until_mono=self.valid_until_mono if term else None,
            observed=self._last_observation,
            lease_observed=self._observed_ever,
        )

    # ------------------------------------------------------------------ decisions

    def next_action(self, now: Moment) -> Action:
        self._expire_term(now)
        if self._done:
            return Done()
        timeout = self.config.request_timeout
        if self._closing:
            return self._closing_action(now, timeout)
        if now.mono < self._retry_at_mono:
            return Wait(self._retry_at_mono if self._term is None else min(self._retry_at_mono, self.valid_until_mono))
        if self._needs_read:
            # A leader's read is capped like its renewal: nothing may hold the loop past the deadline.
            return Read(timeout if self._term is None else min(timeout, self.valid_until_mono - now.mono))
        if self._term is not None:
            due = self._term.last_renew_started_mono + self.config.renewal_interval_s
            if now.mono < due:
                return Wait(min(due, self.valid_until_mono))
            left = self.valid_until_mono - now.mono
            if self._observed is None:  # a term starts from a written record; never renew blind, re-read
                self._needs_read = True
                return Read(min(timeout, left))
            record = replace(self._observed.record, renew_time=now.wall,
                             duration_s=int(self.config.lease_ttl_s), holder=self.identity,
                             fencing_token=self._term.fencing_token)
            return Write("renew", record, self._observed.version, min(timeout, left))
        return self._standby_action(now, timeout)

    def _standby_action(self, now: Moment, timeout: float) -> Action:
        if self._observed is None:
            return Write("acquire", self._new_term_record(None, now), None, timeout)
        record = self._observed.record
        taken_over = None
        if record.holder and not self._holds(record):
            expires = self._observed_changed_mono + record.duration_s
            if now.mono < expires:
                return Wait(expires)
            taken_over = "expired"
        elif record.is_free and record.renew_time is not None:
            taken_over = "released"
        if taken_over and self._failover_counted_for != self._observed.version:
            self._failover_counted_for = self._observed.version
            self.stats.failovers_detected += 1
        return Write("acquire", self._new_term_record(record, now), self._observed.version, timeout)

    def _closing_action(self, now: Moment, timeout: float) -> Action:
        """Release what this process holds, re-reading after a conflict; give up after a few tries
        (the lease then simply expires)."""
        if self._release_attempts >= self.MAX_RELEASE_ATTEMPTS:
            self._done = True
            return Done()
        if self._needs_read:
            return Wait(self._retry_at_mono) if now.mono < self._retry_at_mono else Read(timeout)
        if self._observed is None or not self._holds(self._observed.record):
            self._done = True
            return Done()
        self._release_attempts += 1
        record = replace(self._observed.record, holder="", duration_s=RELEASED_DURATION_S,
                         acquire_time=now.wall, renew_time=now.wall)
        return Write("release", record, self._observed.version, timeout)

    def _holds(self, record: LeaseRecord) -> bool:
        return record.holder == self.identity and self._held_token is not None \
            and record.fencing_token == self._held_token

    def _new_term_record(self, old: LeaseRecord | None, now: Moment) -> LeaseRecord:
        if old is None:
            base, transitions = 0, 0
        else:
            base = old.fencing_token if old.fencing_token is not None else old.transitions
            # client-go counts a transition only when the holder changes.
            transitions = old.transitions + (0 if old.holder == self.identity else 1)
        # Never below a token this process has seen, even if the Lease was deleted meanwhile.
        token = max(base, self._highest_token) + 1
        return LeaseRecord(holder=self.identity, duration_s=int(self.config.lease_ttl_s),
                           acquire_time=now.wall, renew_time=now.wall, transitions=transitions,
                           fencing_token=token)

    # ------------------------------------------------------------------ observations

    def observe(self, now: Moment, current: Versioned | None, *, from_stream: bool = False,
                sent_at_generation: int | None = None) -> None:
        """A read or watch result: the stored record (None: the Lease does not exist).

        `from_stream`: a watch event after the stream's initial list. Watch events arrive in
        order, so until the echo of our own last write shows up, any event predates that write
        and is ignored; comparing resourceVersions, which are opaque, is never needed.
        `sent_at_generation`: `write_generation` when the request was sent; if one of our writes
        succeeded since, the answer may predate it and is dropped (the stream will catch up).
        """
        if sent_at_generation is not None and sent_at_generation != self.write_generation:
            return
        if from_stream:
            if current is not None:
                self._stream_versions.append(current.version)
            if self._echo_pending is not None:
                if current is None or current.version != self._echo_pending:
                    return
                self._echo_pending = None
        else:
            self._echo_pending = None
        self._last_observation = now
        self._needs_read = False
        changed = not self._observed_ever or (
            (current is None) != (self._observed is None)
            or (current is not None and self._observed is not None
                and not current.record.same_observation(self._observed.record)))
        if changed:
            self._observed_changed_mono = now.mono
        self._observed_ever = True
        self._observed = current
        if current is not None:
            token = current.record.fencing_token or 0
            self._highest_token = max(self._highest_token, token)
            if current.record.holder == self.identity and token == self._maybe_written:
                self._held_token = token  # our timed-out acquisition did land
        self._maybe_written = None
        if current is None or not self._holds(current.record):
            self._held_token = None
        if self._term is not None:
            if current is None:
                self._lose_term("lease deleted")
            elif current.record.holder != self.identity:
                self._lose_term(f"lease taken by {current.record.holder or '(released)'}")
            elif current.record.fencing_token != self._term.fencing_token:
                self._lose_term("lease taken by another process with this identity")
        self._expire_term(now)

    def write_succeeded(self, now: Moment, action: Write, started: Moment, stored: Versioned) -> None:
        self._clear_failures()
        self.write_generation += 1
        token = stored.record.fencing_token or 0
        if action.kind == "release":
            self._done = True
            self._held_token = None
        else:
            self._held_token = token
            if action.kind == "acquire" and not self._closing:
                self._term = Term(token, started, started.mono)
                self.stats.leader_elections_won += 1
            elif action.kind == "renew" and self._term is not None:
                self._term = replace(self._term, last_renew_started_mono=started.mono)
                self.stats.lease_renewals += 1
        self.observe(now, stored)
        # The stream may already have delivered this write (it often races the response).
        self._echo_pending = None if stored.version in self._stream_versions else stored.version

    def write_conflicted(self, now: Moment, action: Write) -> None:
        """Someone else wrote first: never overwrite, re-read and decide again."""
        self._needs_read = True
        self._count_write_failure(action)

    def call_failed(self, now: Moment, action: Read | Write) -> None:
        """Timeout or error: a write's outcome is unknown, so re-read before deciding."""
        self._needs_read = True
        self._failures += 1
        self._retry_at_mono = now.mono + min(self.config.retry_cap_s, 0.1 * 2 ** (self._failures - 1))
        if isinstance(action, Write):
            self._count_write_failure(action)
            if action.kind == "acquire":
                self._maybe_written = action.record.fencing_token
        elif self._term is not None:
            self.stats.lease_renewal_failures += 1  # a leader that cannot even read is failing to renew
        if self._closing and not isinstance(action, Write):
            self._release_attempts += 1  # an outage must not hold shutdown forever
        self._expire_term(now)

    def heartbeat(self) -> None:
        self.stats.heartbeats_sent += 1

    def close(self) -> None:
        """Begin shutdown: standby at once; the next actions release the lease if this process
        holds it, then Done."""
        if not self._closing and self._term is not None:
            self.last_loss_reason = "shutting down"
        self._closing = True
        self._term = None

    # ------------------------------------------------------------------ internals

    def _count_write_failure(self, action: Write) -> None:
        if action.kind == "renew":
            self.stats.lease_renewal_failures += 1
        elif action.kind == "acquire":
            self.stats.leader_elections_lost += 1

    def _clear_failures(self) -> None:
        self._failures = 0
        self._retry_at_mono = 0.0

    def _expire_term(self, now: Moment) -> None:
        if self._term is not None and now.mono >= self.valid_until_mono:
            self._lose_term("renew deadline passed")

    def _lose_term(self, reason: str) -> None:
        self._term = None
        self.last_loss_reason = reason
        self.stats.leader_elections_lost += 1
