"""The election as a pure state machine (sans-IO): fed moments and observations, returns actions.

Every rule about expiry, hand-over and terms lives here and nowhere else. All times are this
process's monotonic clock; `renewTime` is never compared with it, so clock skew between nodes
cannot make two leaders. The async driver (`heartbeat.BeatHeartbeat`) performs the actions and
feeds the results back.

Leader
* L1. A leader leads only until `renew_deadline` (D) after the *start* of its last successful
  write; D < lease TTL (d) is validated. It steps down at once, before that, when it observes its
  record deleted, or naming another holder, another token, or no holder.
* L2. Every new term carries a fencing token larger than any stored in the Lease or seen by this
  process, and than any this Lease (under this name, in this etcd) ever carried, even when the
  Lease was deleted and no process remembers: token = 1 + max(the replaced record's token (or
  leaseTransitions), the highest token this process has seen, V), where V is the
  resourceVersion of the record the acquisition replaces, or, for a creation, the store's
  version when the Lease was seen absent (the list that showed it absent, or the deletion's).
  Why this exceeds every earlier token T: resourceVersions of one resource are comparable
  integers that only grow, across deletion and re-creation (Kubernetes 1.35+, KEP-5504). Each
  term costs at least one write, its acquisition, whose version exceeds V; so by induction
  T <= the version of T's own acquisition write. Every earlier acquisition write precedes the
  record replaced (or the absence observed), so its version, hence T, is <= V < token. It only
  raises tokens: the formula is the old one (1 + the previous token) or larger, so users that
  stored a token keep accepting the next. The one hazard: an etcd restored from a backup
  rewinds versions, and tokens issued after the backup may be met again (README).
  Tokens read are honoured only within what this argument can produce (core/record.py
  `parse_fencing_token`): a decimal integer up to 2^63-1 (int64, the bigint the fences take) and,
  when the record's resourceVersion is an integer V, up to V + 2^40. By the induction above no
  term's token exceeds the version of its own acquisition write, so only a hand edit goes past V;
  the slack keeps honouring tokens remembered from before an etcd restore (it rewinds V). A token
  within it is honoured even above V, since it only raises; anything else (unparsable, negative,
  too large) is ignored, with a warning in the log (`fencing_token_ignored`), and the record reads
  as one without a token (a client-go holder's): every rule then treats it the more cautious way
  (F3 is not ended by it, it is no release of a later term, it is not our own record), and the
  next token still exceeds V. A token we issue also stays within V + 2^40 of the record it
  becomes (each part of the max is within it, and the new version exceeds V), so no edit can run
  tokens out of int64. Should a token still come out above 2^63-1 (a store whose versions are not
  integers, edited to the maximum), the candidate does not campaign, and says why.
  A record naming our identity with a token we did not write (a previous life, or a duplicate
  process) is someone else's.
* L3 (rule A, the app: core/liveness.py). A term ends at the first moment its app forbids
  leading: a resign (whatever the sit-out, 0 included) or the app's heartbeat TTL lapsing. The
  view says standby from that very moment (the driver arms a timer for it, as for the renew
  deadline), and nothing brings that term back: not a late heartbeat, not a renewal or read that
  was in flight. The next action releases (naming a successor, H1); after a sit-out of 0 the
  candidate may campaign again at once, in a new term. With an app heartbeat TTL, the deadline the
  app is told never goes past that lapse (P1), so the release needs no wait for it (P2).

Candidate: fences. A *fence* is a local time before which some holder may still believe it leads.
A candidate writes a new term only when every fence has passed. On each observed *change* of the
record at local time t (the same record observed again changes nothing):
* C credit. The duration a holder H (identity and token) is credited with is the longest
  leaseDurationSeconds this process has seen H's records carry, and never less than our own
  lease TTL. A record's duration may be a hand edit (`kubectl patch`: shortened to 1 s, or
  removed, which reads as unknown, never as 0) that a candidate sees before, or instead of, H's
  own record: a new pod, a restarted sidecar, a watch that relisted. So a holder never seen
  before is fenced for at least our own `--leader-lease-ttl` from its first sight, and an edit
  can lengthen a holder's fence but never shorten it.
* F1 holder seen. A record naming holder H: H's fence >= t + H's credit.
* F2 holder removed. H's record deleted, emptied (not by H's release), or changed in place (same
  holder and token, e.g. another leaseDurationSeconds): H's fence >= t + H's credit. H may not
  have seen the change (paused, cut off), so it leads on until its own deadline. With F1 and C,
  a changed leaseDurationSeconds is judged against the largest of the old, the new and our TTL.
  H's record replaced by *another holder's* leaves H's fence as it was: that holder won a
  compare-and-swap after H expired or released by its own fences.
* F3 no history. No Lease at all (at start-up or after a deletion), or an empty holder that is
  not a release: the fence of "a holder never seen" >= t + our own lease TTL. So a brand-new
  candidate that finds no Lease creates it one lease TTL after it first looked (a new election's
  first leader appears after leaseDuration), and after `kubectl delete lease` the next leader
  appears one lease duration after the candidates saw the deletion. A later acquisition by
  another sidecar ends this fence: a record carrying a fencing token above every token we had
  seen, which that sidecar wrote only after passing its own fences, and they covered any holder
  we never saw (the induction step of the argument below). Without this, a release soon after a
  new election's first term waited out the rest of our first TTL. A record without a token (a
  client-go candidate, or `kubectl create`, which wait for nothing) or with an old one keeps it.
* R release. A release (empty holder, leaseDurationSeconds 1, acquireTime and renewTime set, and,
  if we saw the record it replaced, its leaseTransitions and token unchanged: client-go's shape,
  and ours) sets no fence, and ends the releasing holder's: the lease is taken at once. So does
  a release carrying a token above the one we last saw (both sidecar tokens): we missed a later
  term (a watch relisted across it, as after an API outage), whose holder passed its fences,
  which covered the holder we saw, and stepped down before writing this release.
* O own record. A record this process holds (our identity and the token we wrote) is renewed at
  once, whatever the fences: we know our own state.
The leader that observes its record deleted or replaced is a candidate like any other: it
publishes standby at once (L1), then obeys the fences (its own record's F2, and F3).

Hand-over (core/succession.py)
* H1. A leader asked to hand over (request_handover, the record's handover-to annotation, or a
  preferredHolder naming another) ends its term first, then writes a release naming the successor
  (annotation lease-sidecar.io/successor) and clearing the request; it stays a candidate. Every
  other graceful release (close) names the successor chosen from the members view, if any.
* H2. A release naming a successor may be taken only by that successor for SUCCESSOR_WINDOW_S
  after this process saw it; then by anyone. This adds a wait, never a write, so it cannot weaken
  the rules above.

Drain (issue 18 item 6, `--handover-drain-timeout`)
* D1. With a drain timeout, a graceful release (close, a hand-over request) does not end the term
  at once: the leader goes on leading and renewing, with `draining` published, until the app
  resigns (its work done: L3 ends the term) or the timeout passes; then the term ends and the
  release is written as in H1. The timeout counts from the drain's start, but the drain lasts at
  least until the deadline already published to the app when it began (P2): the app never
  acknowledged, so it may act until then; while draining, the published deadline is at most the
  drain's end (P1). So a drain that times out releases at once, with nothing outstanding. Nothing
  else changes: the renew deadline still ends the term if renewals fail (L1), and any observation
  that ends it ends the drain too. It adds a wait before a release, never a write, so the rules
  above hold as they are.

The app's deadline (review finding S1)
* P1. The deadline published to the app (`valid_until_monotonic` in /leader, the event streams and
  status.json: `lead_until_mono`, which the app's client self-fences on) is the earliest of the
  renew deadline (L1); with an app heartbeat TTL, the app's last heartbeat + that TTL (L3 ends
  the term then anyway); while draining, the drain's end (D1). The term is led until exactly that
  moment (`is_leader`), so what the app is told and what the sidecar claims are the same.
* P2. A release is written only once every deadline published for its term has passed (the
  latest the status board showed: `publish`), unless the app gave the term up itself: a resign
  since the term began, which is also how it acknowledges a drain. A release lets another
  candidate take the Lease at once (R), so without this the app could still act on a deadline it
  was told while another leader acts. By P1 the wait is nothing after an app TTL lapse or a drain
  that timed out; it is the remaining deadline (at most the renew deadline) after a SIGTERM or a
  hand-over request without a drain to an app that did not resign. A cooperating app (resign on
  SIGTERM, resign when draining) hands over in one write, at once, as before. The wait delays a
  hand-over, never makes it less safe: until the release, rivals' fences for our last renewal
  (F1) outlast its renew deadline anyway. Every status the board computes counts as published
  (the role files get one at every heartbeat and change, HTTP answers and event streams theirs),
  so every term of the election has a published deadline, whether or not an app ever asked the
  local API: the sidecar cannot know that nobody read status.json. Every release path (close,
  hand-over, the app's end of the term) asks one hook, `held_release`, and waits while it says
  so; a held release is no write, so it is not one of the attempts a close gives up after. An
  Elector whose view no board publishes binds nothing here; keyed locks tell their owners K2's
  deadline and hold their releases for it by overriding that hook (K7 in core/keyed_locks.py).

Safety argument. Take any holder H (duration d, deadline D < d) and its last successful write W,
started at s: H leads until at most s + D. Any state a candidate C observes after W (W's record,
a later change, the Lease's absence) exists only after W started, so C observes it at t > s.
- C saw W: F1 fences H until t + d > s + D (C credits H at least d, the duration W carries).
- C saw a later change H did not make (deletion, emptying, shrink): F2 fences H until t + d
  (C credits H with the longest duration it saw H with; H writes the same duration on every
  renewal). If another holder Q took over, Q passed its own fences for H first (by induction).
- C's first view of H's term is a record edited by hand (duration shortened or removed): F1 with
  C fences H until t + C's TTL, which covers H if d <= C's TTL (as for F3 below).
- C never saw H (it started later, or its watch relisted across H's whole term) and finds the
  Lease gone or emptied: F3 fences until t + C's TTL, which covers H if d <= C's TTL. If it finds
  another holder's record instead, that holder acquired it by compare-and-swap after passing its
  own fences, which covered H (by induction); only a third party's overwrite breaks this.
  An empty record replacing an empty one says nothing new about holders and sets no fence.
- H released: H published standby before writing the release (close() ends the term first),
  and every deadline H's app was told had passed by then, unless the app resigned (P2).
So C's write starts after H's deadline. Writes are compare-and-swap on the version read, so among
candidates past their fences one wins, and the rest observe it (F1). Assumed: monotonic clocks of
the nodes run at the same rate within (d - D) / d; candidates of one Lease use lease durations no
longer than each other's TTL (only for holders a candidate never saw); a third party that writes
a record in exact release shape, or overwrites a live holder's record with another holder's, is
believed (nothing distinguishes it from a candidate that won the lease).

Why fences and not a finalizer (issue 12's alternative: keep a deleted Lease readable until its
holder has expired): a finalizer covers only `kubectl delete`, not an emptied holder, a shrunk
duration, or a brand-new candidate that finds no Lease, which need these rules anyway; removing
it safely needs the same wait; and when no sidecar is left to remove it (uninstall, scale to
zero) the Lease, and its namespace, hang in Terminating. The fences cost one lease duration after
a deletion and on a new election's first creation, and need no extra state, RBAC or cleanup.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime

from sidecar.core.config import ElectionConfig
from sidecar.core.liveness import AppLiveness
from sidecar.core.lock import Versioned
from sidecar.core.record import MAX_FENCING_TOKEN, RELEASED_DURATION_S, LeaseRecord
from sidecar.core.succession import Member, choose_successor, requested_successor, reserved_for, reserved_until


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
    reason: str = field(default="", compare=False)
    """Why, when it is a fence or a held release (for the log); empty for renewal intervals and backoff."""
    holds_release: bool = field(default=False, compare=False)
    """P2: a release waits for the deadline the app was told (not a fence before taking the lease)."""


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
class TermEnd:
    """How a term ended: `reason` belongs to the term with this token and no other."""

    fencing_token: int
    reason: str


HolderKey = tuple[str, int | None]
"""A holder as the record names it: identity and fencing token (None for client-go holders)."""

_CREDITED_HOLDERS_KEPT = 16
"""Rule C remembers this many holders; one forgotten is credited our TTL again, which is safe."""

UNSEEN_HOLDER = None
"""The fence key of F3: a holder this process never observed."""


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
    term_end: TermEnd | None = None
    """The latest term's end, if it has ended (by `now`, even before the Elector noticed)."""
    draining: bool = False
    """D1: leading, while a graceful release waits for the app to resign (or the drain timeout)."""


class Elector:
    """One candidate's view of one lease. Not thread-safe; call from one task."""

    MAX_RELEASE_ATTEMPTS = 3

    def __init__(self, identity: str, config: ElectionConfig, gate: AppLiveness | None = None) -> None:
        if not identity:
            raise ValueError("identity: must not be empty")
        self.identity = identity
        self.config = config
        self.gate = gate or AppLiveness()
        """The app's liveness and resigns (core/liveness.py): while it forbids leading, a leader
        steps down (standby, then release) and a standby does not campaign."""
        self.stats = HeartbeatStats()
        self.last_loss_reason: str | None = None
        self._term_end: TermEnd | None = None
        self._observed: Versioned | None = None
        self._observed_ever = False
        self._observed_changed_mono = 0.0
        self._credited_s: dict[HolderKey, float] = {}
        """Per holder, the duration it is credited with (rule C), for the last few holders."""
        self._fences: dict[HolderKey | None, tuple[float, str]] = {}
        """Per holder, (until_mono, why): rules F1-F3 in the module docstring."""
        self._last_observation: Moment | None = None
        self._term: Term | None = None
        self._held_token: int | None = None
        """Token of the record this process last wrote as holder, while the Lease still shows it.
        A record naming our identity with any other token is someone else's (a previous life, or
        a duplicate process with our identity) and must expire before we take it."""
        self._highest_token = 0
        self._absent_version: int | None = None
        """While the Lease is observed absent: the store's version at or after the absence (L2)."""
        self._maybe_written: LeaseRecord | None = None
        """An acquisition whose outcome is unknown (timeout): ours only if a read shows this very
        record. Token and identity are not enough: a duplicate process with our identity that saw
        the same Lease picks the same token; the acquire time (microseconds) tells the two apart."""
        self._needs_read = True
        self._failures = 0
        self._retry_at_mono = 0.0
        self._failover_counted_for: str | None = None
        self._closing = False
        self._release_attempts = 0
        self._done = False
        self._echo_pending: str | None = None
        self._stream_versions: deque[str] = deque(maxlen=32)
        self._newest_version: int | None = None
        self._older_read_pending = False
        """The resourceVersion of the newest record (or absence) observed: a stream event older
        than it is stale (see `observe`)."""
        self.write_generation = 0
        """Counts successful writes; a list sent before one of them landed may be stale."""
        self._handover_to: str | None = None
        """The successor this leader was asked (locally) to release to; see core/succession.py."""
        self._handing_over = False
        """The term has ended for a hand-over; the release to `_handover_to` is being written."""
        self._drain_until_mono: float | None = None
        """D1: a graceful release waits for the app until then, the term going on meanwhile."""
        self._drain_successor: str | None = None
        self._drain_closing = False
        """The drain ends in shutdown (close) rather than a hand-over to `_drain_successor`."""
        self._promise: tuple[float, float] | None = None
        """P2: (the term's start, the latest deadline published for it), until a new term begins."""
        self.members: list[Member] = []
        """The other candidates as the members view shows them, for choosing a successor."""
        self.own_revision = ""
        """This pod's revision (pod-template-hash), "" if unknown."""

    # ------------------------------------------------------------------ queries

    def is_leader(self, now_mono: float) -> bool:
        # Standby the moment the app's TTL passes or it resigns, and for good: see _app_ended.
        return self._term is not None and not self._closing and now_mono < self.lead_until_mono \
            and self._app_ended(now_mono) is None

    def _app_ended(self, now_mono: float) -> str | None:
        """Why the app ended the current term (rule A), or None."""
        if self._term is None:
            return None
        return self.gate.term_end_reason(self._term.started.mono, now_mono)

    @property
    def valid_until_mono(self) -> float:
        """The renew deadline (L1); the app is told `lead_until_mono`, which is never later."""
        if self._term is None:
            return float("-inf")
        return self._term.last_renew_started_mono + self.config.renew_deadline

    @property
    def lead_until_mono(self) -> float:
        """P1: the deadline published to the app, and the end of the term unless it is renewed: the
        renew deadline, the app's TTL lapse, the drain's end, whichever comes first."""
        until = self.valid_until_mono
        app_until = self.gate.leading_until_mono()
        if app_until is not None:
            until = min(until, app_until)
        if self._drain_until_mono is not None:
            until = min(until, self._drain_until_mono)
        return until

    def publish(self, now_mono: float) -> ElectionView:
        """The view, for a publisher that hands its deadline to the app (the status board: /leader,
        the event streams, status.json): the deadline shown is a promise a release waits for (P2)."""
        view = self.view(now_mono)
        if view.valid_until_mono is not None and self._term is not None:
            latest = self._promise[1] if self._promise is not None else float("-inf")
            self._promise = (self._term.started.mono, max(latest, view.valid_until_mono))
        return view

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
        term_end = self._term_end
        if self._term is not None and not leading and not self._closing:
            term_end = TermEnd(self._term.fencing_token, self._unnoticed_end_reason(now_mono))
        return ElectionView(
            role=role,
            holder=holder,
            fencing_token=term.fencing_token if term else None,
            term_started=term.started if term else None,
            valid_until_mono=self.lead_until_mono if term else None,
            observed=self._last_observation,
            lease_observed=self._observed_ever,
            term_end=term_end,
            draining=leading and self._drain_until_mono is not None,
        )

    def _unnoticed_end_reason(self, now_mono: float) -> str:
        """Why the running term is over by `now_mono` though the Elector has not acted on it yet."""
        app_ended = self._app_ended(now_mono)
        if app_ended is not None:
            return self._as_acknowledged_handover(app_ended)
        if now_mono < self.valid_until_mono and self._drain_until_mono is not None:
            return "shutting down" if self._drain_closing else f"handing over to {self._drain_successor}"
        return "renew deadline passed"

    # ------------------------------------------------------------------ decisions

    def next_action(self, now: Moment) -> Action:
        self._expire_term(now)
        if self._drain_until_mono is not None and (self._term is None or now.mono >= self._drain_until_mono):
            self._end_drain()
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
        if self._handing_over:
            handover = self._handover_action(now, timeout)
            if handover is not None:
                return handover
        if self._term is not None and self._observed is not None:
            successor = self.handover_requested(self._observed.record)
            if successor and not self._begin_drain(now, successor, closing=False):
                # Standby first: the driver publishes this before it sends the release.
                self._begin_handover(successor)
                return self._release_when_promise_kept(now, timeout, successor)
        if self._term is not None:
            due = self._term.last_renew_started_mono + self.config.renewal_interval_s
            if now.mono < due:
                return Wait(min(due, self.valid_until_mono, self.gate.next_change_mono(now.mono) or due,
                                self._drain_until_mono or due))
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
        if not self.gate.allows_leading(now.mono):  # no campaign without a live app, nor while sitting out
            return Wait(self.gate.next_change_mono(now.mono) or now.mono + self.config.heartbeat_interval_s)
        record = self._observed.record if self._observed is not None else None
        if record is None or not self._holds(record):  # rule O: our own record needs no fence
            until, why = self._fence(now)
            if now.mono < until:
                return Wait(until, why)
        if record is None or self._observed is None:
            return self._acquire(now, None, self._absent_version, None, timeout)
        if _is_release(record):
            reserved = reserved_until(record, self.identity, self._observed_changed_mono)
            if reserved is not None and now.mono < reserved:
                return Wait(reserved, f"released to {reserved_for(record)}: theirs for now")
        taken_over = None
        if record.holder and not self._holds(record):
            taken_over = "expired"
        elif _is_release(record):
            taken_over = "released"
        if taken_over and self._failover_counted_for != self._observed.version:
            self._failover_counted_for = self._observed.version
            self.stats.failovers_detected += 1
        return self._acquire(now, record, _version_number(self._observed.version), self._observed.version, timeout)

    def _acquire(self, now: Moment, old: LeaseRecord | None, replaced_version: int | None,
                 expected_version: str | None, timeout: float) -> Write | Wait:
        record = self._new_term_record(old, now, replaced_version)
        if (record.fencing_token or 0) > MAX_FENCING_TOKEN:
            # L2: a bigint fence could not take this token; no term rather than a wrong one.
            return Wait(now.mono + self.config.lease_ttl_s,
                        "no fencing token left below 2^63-1 (the Lease's token annotation was edited to the "
                        "maximum?): remove it and reset the fences")
        return Write("acquire", record, expected_version, timeout)

    def _closing_action(self, now: Moment, timeout: float) -> Action:
        """Release what this process holds, re-reading after a conflict; give up after a few tries
        (the lease then simply expires)."""
        if self._release_attempts >= self.MAX_RELEASE_ATTEMPTS:
            self._done = True
            return Done()
        if self._held_token is None and self._maybe_written is None:
            self._done = True  # nothing written, nothing of unknown outcome: nothing to release
            return Done()
        if self._needs_read:
            return Wait(self._retry_at_mono) if now.mono < self._retry_at_mono else Read(timeout)
        if self._observed is None or not self._holds(self._observed.record):
            self._done = True
            return Done()
        return self._release_when_promise_kept(now, timeout,
                                               self._handover_to or self.choose_successor(replacing_self=True))

    def _handover_action(self, now: Moment, timeout: float) -> Action | None:
        """Releasing to a successor: like closing, but back to standby afterwards (None: done)."""
        if self._release_attempts < self.MAX_RELEASE_ATTEMPTS and self._held_token is not None:
            if self._needs_read:
                return Wait(self._retry_at_mono) if now.mono < self._retry_at_mono else Read(timeout)
            if self._observed is not None and self._holds(self._observed.record):
                return self._release_when_promise_kept(now, timeout, self._handover_to)
        self._handing_over, self._handover_to = False, None  # released, or the lease will expire
        return None

    def _release_when_promise_kept(self, now: Moment, timeout: float, successor: str | None) -> Write | Wait:
        """P2: the release, once every deadline published to the app for its term has passed (or
        the app resigned); until then a wait, which an app's resign (the driver wakes) cuts short.
        Every release path (close, hand-over, the app's end of the term) comes through here."""
        held = self.held_release(now.mono)
        if held is not None:
            return held  # not written, so not one of the attempts a close gives up after
        return self._release_write(now, timeout, successor)

    def held_release(self, now_mono: float) -> Wait | None:
        """P2: the wait that holds back a release of the last term now (until every deadline
        published for it has passed, unless the app resigned), or None when the release may be
        written. The one hook for holding releases: every release path asks it, and a drain (D1)
        lasts at least until it ends. A subclass whose terms are told deadlines of its own extends
        it, never shortens it (keyed locks: K7, the deadline told to a lock's owner)."""
        promised = self._outstanding_promise(now_mono)
        if promised is None:
            return None
        return Wait(promised, "the app was told it leads until then; released then, or when it resigns",
                    holds_release=True)

    def _outstanding_promise(self, now_mono: float) -> float | None:
        """P2: the latest deadline published for the last term, if still ahead and not given up by
        the app (a resign since that term began); else None."""
        if self._promise is None:
            return None
        started_mono, until_mono = self._promise
        if now_mono >= until_mono or self.gate.resigned_since(started_mono):
            return None
        return until_mono

    def _release_write(self, now: Moment, timeout: float, successor: str | None) -> Write:
        """client-go's release, naming the successor (only it may take the lease for a while);
        a hand-over request or preferredHolder it answers is cleared."""
        if self._observed is None:
            raise RuntimeError("release without an observed record")  # callers check _holds first
        self._release_attempts += 1
        record = replace(self._observed.record, holder="", duration_s=RELEASED_DURATION_S,
                         acquire_time=now.wall, renew_time=now.wall, successor=successor or "",
                         handover_to="", preferred_holder="")
        return Write("release", record, self._observed.version, timeout)

    def handover_requested(self, record: LeaseRecord) -> str | None:
        """H1: whom `record` (our own, while leading) asks this leader to hand over to (its
        handover-to annotation, or a preferredHolder naming another), or None. Keyed locks
        override it: a lock has no successors."""
        return requested_successor(record, self.identity)

    def choose_successor(self, replacing_self: bool = False) -> str | None:
        """Whom a graceful release names (see core/succession.py)."""
        return choose_successor(self.members, self.identity, self.own_revision, replacing_self)

    def request_handover(self, successor: str, now: Moment) -> bool:
        """Standby now; the next action releases to `successor`. False if not leading (or it is us).
        With a drain timeout (D1), the term goes on, draining, until the app resigns or it ends."""
        if not self.is_leader(now.mono) or not successor or successor == self.identity:
            return False
        if not self._begin_drain(now, successor, closing=False):
            self._begin_handover(successor)
        return True

    def draining(self, now_mono: float) -> bool:
        """D1: a graceful release is waiting for the app (the term goes on meanwhile)."""
        return self._drain_until_mono is not None and self.is_leader(now_mono)

    def _begin_drain(self, now: Moment, successor: str | None, closing: bool) -> bool:
        """D1: start (or keep) draining instead of ending the term now; False when there is no
        drain to do (no drain timeout, or not leading)."""
        if self.config.handover_drain_timeout_s <= 0 or not self.is_leader(now.mono):
            return False
        if self._drain_until_mono is None:
            # D1, P2: the app was told a deadline before it heard of the drain; it lasts until then.
            held = self.held_release(now.mono)
            self._drain_until_mono = max(now.mono + self.config.handover_drain_timeout_s,
                                         held.until_mono if held is not None else now.mono)
        self._drain_successor = self._drain_successor or successor
        self._drain_closing = self._drain_closing or closing
        return True

    def _end_drain(self) -> None:
        """D1: the app resigned, the drain timed out, or the term ended otherwise: release now."""
        closing, successor = self._drain_closing, self._drain_successor
        self._drain_until_mono, self._drain_successor, self._drain_closing = None, None, False
        if closing:
            self._finish_close()
            self._handover_to = self._handover_to or successor  # a hand-over asked before the close
        elif self._term is not None and successor:
            self._begin_handover(successor)

    def _begin_handover(self, successor: str) -> None:
        self._end_term(f"handing over to {successor}")
        self._handing_over, self._handover_to, self._release_attempts = True, successor, 0

    def _fence(self, now: Moment) -> tuple[float, str]:
        """The latest fence still ahead (rules F1-F3), or (-inf, "") when all have passed."""
        for key in [key for key, (until, _) in self._fences.items() if until <= now.mono]:
            del self._fences[key]
        return max(self._fences.values(), default=(float("-inf"), ""))

    def _raise_fence(self, key: HolderKey | None, until_mono: float, why: str) -> None:
        if until_mono > self._fences.get(key, (float("-inf"), ""))[0]:
            self._fences[key] = (until_mono, why)

    def _update_fences(self, now: Moment, before: LeaseRecord | None, after: LeaseRecord | None,
                       first: bool, highest_before: int) -> None:
        """Rules F1-F3 and R for one observed change from `before` to `after` (None: no Lease)."""
        held_before = before is not None and before.holder != ""
        released = after is not None and _is_release(after) and (first or (
            held_before and ((after.transitions, after.fencing_token) == (before.transitions, before.fencing_token)
                             or _released_a_later_term(before, after))))
        if before is not None and held_before:
            key = _holder_key(before)
            if released:
                self._fences.pop(key, None)  # R: the holder stepped down before writing this
            elif after is None or after.holder == "":
                self._raise_fence(key, now.mono + self._credit(before),
                                  f"{before.holder} may not have seen its record go and may lead until then")  # F2
            elif _holder_key(after) == key:
                self._raise_fence(key, now.mono + self._credit(before), f"held by {before.holder}")  # F2, in place
            # Another holder's record: it won a compare-and-swap after H expired or released in its
            # own view; H's fence stays as F1 set it. (Extending it would delay every hand-over
            # that follows a failover by up to a lease duration.)
        if after is not None and after.holder:
            if not self._holds(after):
                self._raise_fence(_holder_key(after), now.mono + self._credit(after),
                                  f"held by {after.holder}")  # F1
                if after.fencing_token is not None and after.fencing_token > highest_before:
                    self._fences.pop(UNSEEN_HOLDER, None)  # F3 ends: that holder's own fences covered it
        elif after is None or (not released and (first or before is None or held_before)):
            why = ("no lease: a holder that did not see it go may still lead" if after is None else
                   "holder cleared without a release: a holder that did not see it may still lead")
            self._raise_fence(UNSEEN_HOLDER, now.mono + self.config.lease_ttl_s, why)  # F3

    def _credit(self, record: LeaseRecord) -> float:
        """Rule C: how long the holder `record` names may lead after a change of it is observed.
        The longest leaseDurationSeconds this process has seen that holder (identity and token)
        with, and never less than our own lease TTL: the record may have been edited by hand
        (shortened, the field removed) before we ever saw the holder's own."""
        key = _holder_key(record)
        credited = max(self._credited_s.pop(key, self.config.lease_ttl_s), float(record.duration_s or 0))
        self._credited_s[key] = credited  # most recent last
        while len(self._credited_s) > _CREDITED_HOLDERS_KEPT:
            del self._credited_s[next(iter(self._credited_s))]
        return credited

    def _holds(self, record: LeaseRecord) -> bool:
        return record.holder == self.identity and self._held_token is not None \
            and record.fencing_token == self._held_token

    def _new_term_record(self, old: LeaseRecord | None, now: Moment, replaced_version: int | None) -> LeaseRecord:
        """`replaced_version`: the resourceVersion of the record this acquisition replaces, or, for
        a creation, the store's version when the Lease was seen absent (None if unknown)."""
        if old is None:
            base, transitions = 0, 0
        else:
            base = old.fencing_token if old.fencing_token is not None else old.transitions
            # client-go counts a transition only when the holder changes.
            transitions = old.transitions + (0 if old.holder == self.identity else 1)
        # L2: never below a token this process has seen, even if the Lease was deleted meanwhile,
        # nor below the version replaced, which exceeds every token written before it.
        token = max(base, self._highest_token, replaced_version or 0) + 1
        return LeaseRecord(holder=self.identity, duration_s=int(self.config.lease_ttl_s),
                           acquire_time=now.wall, renew_time=now.wall, transitions=transitions,
                           fencing_token=token, strategy=old.strategy if old is not None else "")

    # ------------------------------------------------------------------ observations

    def observe(self, now: Moment, current: Versioned | None, *, from_stream: bool = False,
                sent_at_generation: int | None = None, absent_version: str | None = None) -> None:
        """A read or watch result: the stored record (None: the Lease does not exist).

        `absent_version`: with `current` None, a resourceVersion of the store taken at or after
        the absence (a list's, or the deletion's); a creation's token is raised above it (L2).

        `from_stream`: a watch event after the stream's initial list. Watch events arrive in
        order, so until the echo of our own last write shows up, any event predates that write
        and is ignored. A stream event older (by integer resourceVersion) than the newest record
        observed is stale and ignored too: after a read replaced a dropped list, the stream
        catches up on events before that read.
        `sent_at_generation`: `write_generation` when the request was sent; if one of our writes
        succeeded since, the answer may predate it and is dropped (the stream will catch up).
        """
        if sent_at_generation is not None and sent_at_generation != self.write_generation:
            return
        # A deadline that passed while this process was paused is the term's end, whatever this
        # observation says next: the reason must be the true one.
        self._expire_term(now)
        seen = _version_number(current.version if current is not None else absent_version)
        if from_stream and current is not None:
            self._stream_versions.append(current.version)
        if seen is not None and self._newest_version is not None and seen < self._newest_version:
            # Stale: something newer was already observed. A read answered before a write that
            # the stream then delivered first (our own release's read racing the successor's
            # acquisition), or the stream catching up after a read replaced a dropped list, would
            # otherwise move the view back (a named successor then judged its own release "a
            # holder cleared without a release" and waited). Integer resourceVersions of one
            # resource compare (KEP-5504, as L2 relies on); opaque ones skip this. A second read
            # in a row that is older is believed: the store's versions went back (an etcd
            # restore), and the view follows it.
            if from_stream or not self._older_read_pending:
                self._older_read_pending = not from_stream
                return
        self._older_read_pending = False
        if from_stream:
            if self._echo_pending is not None:
                if current is None or current.version != self._echo_pending:
                    return
                self._echo_pending = None
        else:
            self._echo_pending = None
        self._last_observation = now
        self._needs_read = False
        self._newest_version = seen  # never older than before, unless the store went back (above)
        changed = not self._observed_ever or (
            (current is None) != (self._observed is None)
            or (current is not None and self._observed is not None
                and not current.record.same_observation(self._observed.record)))
        first = not self._observed_ever
        before = self._observed.record if self._observed is not None else None
        highest_before = self._highest_token
        self._observed_ever = True
        self._observed = current
        self._absent_version = _version_number(absent_version) if current is None else None
        if current is not None:
            token = current.record.fencing_token or 0
            self._highest_token = max(self._highest_token, token)
            sent = self._maybe_written
            if sent is not None and current.record.holder == self.identity and token == sent.fencing_token \
                    and current.record.acquire_time == sent.acquire_time:
                self._held_token = token  # our timed-out acquisition did land
        self._maybe_written = None
        if current is None or not self._holds(current.record):
            self._held_token = None
        if changed:
            self._observed_changed_mono = now.mono
            self._update_fences(now, before, current.record if current is not None else None, first, highest_before)
        if self._term is not None:
            if current is None:
                self._lose_term("lease deleted")
            elif current.record.holder == "":
                self._lose_term("holder cleared by another writer")
            elif current.record.holder != self.identity:
                self._lose_term(f"lease taken by {current.record.holder}")
            elif current.record.fencing_token != self._term.fencing_token:
                self._lose_term("lease taken by another process with this identity")

    def write_succeeded(self, now: Moment, action: Write, started: Moment, stored: Versioned) -> None:
        self._clear_failures()
        self.write_generation += 1
        token = stored.record.fencing_token or 0
        if action.kind == "release":
            self._done = self._closing
            self._handing_over, self._handover_to = False, None
            self._held_token = None
        else:
            self._held_token = token
            if action.kind == "acquire" and not self._closing:
                self._term = Term(token, started, started.mono)
                self._promise = None  # P2: a term of ours follows ours, nobody else's came between
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
                self._maybe_written = action.record
        elif self._term is not None:
            self.stats.lease_renewal_failures += 1  # a leader that cannot even read is failing to renew
        if self._closing and not isinstance(action, Write):
            self._release_attempts += 1  # an outage must not hold shutdown forever
        self._expire_term(now)

    def heartbeat(self) -> None:
        self.stats.heartbeats_sent += 1

    def close(self, now: Moment | None = None) -> None:
        """Begin shutdown: standby at once; the next actions release the lease if this process
        holds it, then Done. With `now`, a deadline already passed is reported as the reason.
        With a drain timeout (D1) and a term running, the term goes on, draining, first."""
        if now is not None:
            self._expire_term(now)
            if self._begin_drain(now, None, closing=True):
                return
        self._finish_close()

    def _finish_close(self) -> None:
        self._drain_until_mono, self._drain_successor, self._drain_closing = None, None, False
        if not self._closing and self._term is not None:
            self._end_term("shutting down")
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
        ended = self._app_ended(now.mono)
        if ended is not None:
            # Rule A: the app died, hung or resigned: standby first (is_leader already said so from
            # that moment), then the release, then a standby that campaigns when the gate opens.
            self._end_term(self._as_acknowledged_handover(ended))
            if ended != "resigned":
                self.stats.leader_elections_lost += 1
            # H1: name a successor; a resigning app is usually its pod shutting down.
            successor = self._drain_successor or self.choose_successor(replacing_self=ended == "resigned")
            self._handing_over, self._handover_to, self._release_attempts = True, successor, 0

    def _as_acknowledged_handover(self, app_ended: str) -> str:
        """A resign during a hand-over's drain is the app's acknowledgement (D1): the term ends as
        that hand-over, and is announced so (its Event is HandoverRequested, not a plain resign)."""
        if app_ended == "resigned" and self._drain_successor is not None and not self._drain_closing:
            return f"handing over to {self._drain_successor}"
        return app_ended

    def _lose_term(self, reason: str) -> None:
        self._end_term(reason)
        self.stats.leader_elections_lost += 1

    def _end_term(self, reason: str) -> None:
        if self._term is not None:
            self._term_end = TermEnd(self._term.fencing_token, reason)
        self._term = None
        self.last_loss_reason = reason


def _version_number(version: str | None) -> int | None:
    """A resourceVersion as the integer it is (comparable since Kubernetes 1.35, KEP-5504); None
    for a version that is not a decimal integer (another store's), which then raises nothing."""
    if version is None or not (version.isascii() and version.isdigit()) or len(version) > 19:
        return None
    number = int(version)
    return number if number <= MAX_FENCING_TOKEN else None  # not an int64: no etcd revision


def _released_a_later_term(before: LeaseRecord, after: LeaseRecord) -> bool:
    """Rule R for a release whose term we never saw: both records carry sidecar tokens, and the
    release's is the newer one."""
    return before.fencing_token is not None and after.fencing_token is not None \
        and after.fencing_token > before.fencing_token


def _holder_key(record: LeaseRecord) -> HolderKey:
    return record.holder, record.fencing_token


def _is_release(record: LeaseRecord) -> bool:
    """The shape of a release (client-go's, and ours): no holder, leaseDurationSeconds 1, both times set."""
    return (record.holder == "" and record.duration_s == RELEASED_DURATION_S
            and record.acquire_time is not None and record.renew_time is not None)
