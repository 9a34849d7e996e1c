"""Keyed locks (the seed's `DistributedLockBackend`) from the election's own rules (sans-IO).

Each key is a Lease of its own, and each key this sidecar knows is judged by one `KeyElector`:
the election's `Elector` (rules L1-L2, F1-F3, R, O, C in election.py, unchanged), with an
`OwnerGate` in place of the app gate, so it campaigns only while an owner on this pod asks for
the key and releases as soon as that owner lets go. Nothing here decides expiry differently from
the election; the differences are only these, each stated with its reason:

* K1 one TTL for waits. The Elector of every key runs with lease TTL = `--lock-max-ttl` (written as
  leaseDurationSeconds, renewed every third of it, renew deadline two thirds of it). So fences
  (F1-F3, C) judge every holder with the longest TTL any lock may have: the election's assumption
  "all candidates of a Lease use one TTL" holds by construction. A lock's own `ttl` (at most the
  max) is the owner's lease with its sidecar: the owner renews (PUT) within `ttl`, and the sidecar
  keeps the Lease renewed meanwhile; an owner that falls silent for `ttl` loses the lock, which
  the sidecar then releases (others take it at once, rule R). A pod that dies with the lock makes
  others wait `--lock-max-ttl` from their last sight of the Lease changing: expiry is judged by
  local monotonic observation only.
* K2 the holder's deadline first. The deadline told to the owner (`valid_until_monotonic` in the
  acquire, renew and GET answers) is the earliest of the Elector's renew deadline (L1), the
  owner's last renewal + its ttl and, with --app-heartbeat-ttl, the app's last heartbeat + that
  TTL (`KeyElector.promise_owner`). The key's term ends at the first of these at the latest (the
  gate closes at the other two), and the renew deadline is always before any other pod's fence
  ends (L1: renew deadline < TTL).
* K3 "no Lease found". F3 fences a holder nobody saw for one TTL from when the absence was seen. A
  sidecar with `--locks` lists and then watches every lock Lease of its election (one watch for
  all keys, resumed from its last resourceVersion when it breaks). Events come in order, so when
  the stream shows a key absent (its list, a deletion, or no event for it up to the stream's
  latest version), every holder whose record existed since the list was seen by that key's
  Elector (every event of every key is fed to it): a holder never seen wrote its last record
  before the list was received, and its deadline is before then + max TTL. So the F3 fence of an
  absence seen *on the stream* is min(t + max TTL, watched_since + max TTL): a new key is taken at
  once when the watch is `--lock-max-ttl` old. A read (after a conflict or a failed call) that
  finds a key absent keeps F3 unchanged. "Watched" means the stream is open: when it breaks,
  nothing is watched until the resumed watch is answered again, however long that takes (a key
  could be taken, released and collected meanwhile, or its Lease deleted under a live holder,
  unseen here). So from the break, watched_since is unset (a key this sidecar has not seen is
  read, and an absence found waits a full TTL) and every key's view taken before the break is
  read again before it is acted on; once the resumed watch is open, watched_since is the moment
  it opened: it replays every change after the version it resumed from, which each key's Elector
  sees before that new watch is one TTL old. The cost: for `--lock-max-ttl` after a sidecar
  starts, after a watch that could not resume (HTTP 410) and listed again, and after a resumed
  watch opens, keys it finds absent wait until then; one read per key acted on after a break;
  and one list, then one watch request per --failover-timeout, per pod. As in the
  election, a third party that deletes a live holder's Lease within the stream's delay before
  another pod's create is not covered (election.py: "only a third party's overwrite breaks this").
* K4 tokens never restart: a new term's token is the Elector's rule L2, 1 + max(the tokens seen,
  V), with V the resourceVersion of the record it replaces or, for a key created after its
  absence, the store's version that showed it absent (the list's, the deletion's, or the
  stream's latest when a never-seen key is asked for; a read's list), which the driver passes as
  observe's `absent_version` exactly as the election's driver does; and never below
  `version_floor`, the highest such version this Elector was given. etcd revisions only grow and
  a token is at most the resourceVersion of its own acquisition write, which precedes the record
  replaced or the absence, so a Lease deleted (by hand, or collected) and created again never
  goes back to or below any earlier token, without any record kept beside it.
* K5 one owner per key per pod: a second acquisition of a key this pod holds or is acquiring is
  refused (two workers in one pod are two owners). An owner is a random handle; the Lease's
  holderIdentity is "<pod identity>/<handle>", so a restarted pod is a different holder.

Garbage collection (K6): a key whose Lease has shown a release, unchanged, for `--lock-gc-after`
by this sidecar's clock, and which no owner here wants, is deleted with the released record's
resourceVersion as precondition (a concurrent acquisition wins, and the delete fails). By K4 no
token goes back; by K3 a deleted key is taken again at once by a sidecar whose watch saw it go.

K7 no release before a told deadline (review finding S1). A release lets any pod take the key at
once (rule R), so the sidecar writes one only once every deadline it told the key's owner (K2; the
latest: `promised_until_mono`) has passed, unless the owner released the lock itself (DELETE: its
work has stopped). Each way a held key's term ends, and what it releases:
- the owner's ttl running out, or the app's liveness lapsing (C1: over from the lapse, for good):
  every told deadline was at most that moment (K2 takes the earliest of the owner's last renewal
  + ttl and the app's last heartbeat + TTL, and renewals and heartbeats only move these later),
  so the release goes at once;
- the renew deadline passing (renewals failed) or the Lease seen taken, deleted or its holder
  cleared: no release; others wait for our record by observation (F1, F2), past every told
  deadline (K2);
- SIGTERM (close): the term ends and the owner's renewals are refused at once, and the release
  waits for the told deadline (at most the renew deadline, two thirds of --lock-max-ttl); if the
  shutdown grace ends first, no release is written and the Lease expires by observation as above;
- a hand-over request written on a lock's Lease: ends nothing (K8 below);
- the request rate and the key limit refuse requests (429): a refused renewal moves no told
  deadline and ends nothing by itself; garbage collection (K6) deletes only a Lease that shows a
  release, which came after its deadline.
A new owner on this pod takes the key only after the previous term is over and its release was
written or not owed (K5), hence, by the cases above, after the previous owner's told deadline. The
election's own rule for its app (P2 in election.py) binds nothing here (no status board publishes a
key's view); K7 shares only its mechanism: `KeyElector.held_release` extends the Elector's hook
that every release path asks before writing, so a held release is never written, and never
counted as one of the attempts a shutdown gives up after.

K8 no successors. The election hands its term over on request (H1: the handover-to annotation
written by `lease-sidecar handover`, or a preferredHolder); a lock is its owner's until the owner
lets go, its ttl or the app's liveness runs out, or the sidecar stops, so `KeyElector` ignores
such a request on a lock's Lease (the owner keeps the lock, and renewals carry the request on
until the release clears it). A lock's release names no successor (no members view for keys).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from sidecar.core.config import ConfigError, ElectionConfig, parse_duration_s
from sidecar.core.election import UNSEEN_HOLDER, Elector, HolderKey, Moment, Wait
from sidecar.core.liveness import AppLiveness
from sidecar.core.record import LeaseRecord

MAX_KEY_CHARS = 200
KEY_GRAMMAR = ("1 to 200 characters: segments of letters, digits, '.', '_', ':' and '-', each starting with "
               "a letter or digit, joined by single '/'")
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*(/[A-Za-z0-9][A-Za-z0-9._:-]*)*$"
_KEY = re.compile(KEY_PATTERN)
_ZERO = re.compile(r"^\s*(0+(\.0*)?|\.0+)\s*(ms|s|m|h)?\s*$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]*)$")
MAX_PREFIX_CHARS = 180
MIN_MAX_TTL_S = 3.0
MIN_TTL_S = 1.0
MAX_WAIT_S = 300.0
HANDLE_CHARS = 16

KEY_ANNOTATION = "lease-sidecar.io/lock-key"
"""The original key, as the app gave it."""
KEY_LABEL = "lease-sidecar.io/lock-key"
"""sha256 of the key (40 hex digits): labels cannot hold '/' or 200 characters."""
ELECTION_LABEL = "lease-sidecar.io/lock-election"
"""The election (--lease-name, or its hash if longer than a label value may be)."""


class BadRequest(ValueError):
    """A key, TTL, wait or handle that breaks a rule; str(self) names the field and the rule."""


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_CHARS or not _KEY.match(key):
        raise BadRequest(f"key: must be {KEY_GRAMMAR}; got {key[:60]!r}")
    return key


def check_handle(handle: str | None) -> str:
    if handle is None or len(handle) != HANDLE_CHARS or not all(c in "0123456789abcdef" for c in handle):
        raise BadRequest(f"owner: must be the {HANDLE_CHARS}-hex-digit handle the acquisition returned")
    return handle


def parse_ttl_s(raw: str | None, max_ttl_s: float) -> float:
    """`?ttl=` (default: the max). From 1s to --lock-max-ttl."""
    if raw is None:
        return max_ttl_s
    ttl_s = _seconds(raw, "ttl")
    if not MIN_TTL_S <= ttl_s <= max_ttl_s:
        raise BadRequest(f"ttl: must be from {MIN_TTL_S:g}s to --lock-max-ttl ({max_ttl_s:g}s); got {raw[:40]!r}")
    return ttl_s


def parse_wait_s(raw: str | None) -> float:
    """`?wait=` (default 0: answer at once). 0 to 300s."""
    if raw is None:
        return 0.0
    if _ZERO.match(raw):
        return 0.0
    try:
        if float(raw) == 0:  # a number of seconds (any float spelling); 0 answers at once
            return 0.0
    except ValueError:
        pass
    wait_s = _seconds(raw, "wait")
    if wait_s > MAX_WAIT_S:
        raise BadRequest(f"wait: must be at most {MAX_WAIT_S:g}s; got {raw[:40]!r}")
    return wait_s


def _seconds(raw: str, name: str) -> float:
    """A number of seconds in any float spelling (`2`, `0.5`, `1e1`), or a duration (`5s`, `500ms`)."""
    try:
        seconds = float(raw)
    except ValueError:
        try:
            return parse_duration_s(raw, name)
        except ConfigError as error:
            raise BadRequest(str(error)) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadRequest(f"{name}: must be a positive number of seconds or a duration like 5s; got {raw[:40]!r}")
    return seconds


def check_prefix(prefix: str) -> str:
    """--lock-prefix: the start of every lock Lease's name."""
    if not 1 <= len(prefix) <= MAX_PREFIX_CHARS or not _PREFIX.match(prefix):
        raise ConfigError("--lock-prefix", f"must be 1 to {MAX_PREFIX_CHARS} of lowercase letters, digits, '-' and "
                                           f"'.', starting with a letter or digit; got {prefix[:60]!r}")
    return prefix


def check_max_ttl(max_ttl_s: float) -> float:
    if max_ttl_s != int(max_ttl_s) or max_ttl_s < MIN_MAX_TTL_S:
        raise ConfigError("--lock-max-ttl", f"must be whole seconds, at least {MIN_MAX_TTL_S:g}s "
                                            f"(it is written as leaseDurationSeconds); got {max_ttl_s:g}s")
    return max_ttl_s


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def lease_name_for(prefix: str, key: str) -> str:
    """prefix + a readable slug of the key + 12 hex digits of its hash: distinct keys (also ones
    differing only in case or punctuation) get distinct names, within 253 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")[:40].strip("-")
    digest = key_digest(key)[:12]
    return f"{prefix}{slug}-{digest}" if slug else f"{prefix}{digest}"


def election_label(lease_name: str) -> str:
    if len(lease_name) <= 63:
        return lease_name
    return "h-" + hashlib.sha256(lease_name.encode()).hexdigest()[:40]


def lock_election_config(max_ttl_s: float, request_timeout_s: float | None) -> ElectionConfig:
    """K1: the Elector of every key, whatever its owner's ttl."""
    interval_s = max_ttl_s / 3
    timeout_s = min(request_timeout_s or 5.0, interval_s / 2)
    return ElectionConfig(lease_ttl_s=max_ttl_s, renewal_interval_s=interval_s, heartbeat_interval_s=interval_s,
                          heartbeat_ttl_s=2 * interval_s, failover_timeout_s=max_ttl_s + 15,
                          request_timeout_s=timeout_s)


class OwnerGate(AppLiveness):
    """The Elector's gate for one key: lead only while this pod's owner wants the key (acquiring,
    or holding and renewing within its ttl) and, with --app-heartbeat-ttl, while the app is alive;
    a term is over from the first lapse of the app's liveness since it began (`term_end_reason`).
    Only a heartbeat opens the gate's app side, which no `next_change_mono` can foresee: the
    driver wakes its waiting acquisitions at each one (engine `KeyedLocks.app_seen_alive`)."""

    def __init__(self, app: AppLiveness | None = None) -> None:
        super().__init__()
        self.app = app
        self.owner: str | None = None
        self.ttl_s = None  # AppLiveness's field; the owner's ttl is `owner_ttl_s`
        self.owner_ttl_s = 0.0
        self.until_mono = -math.inf
        """The owner's deadline: acquiring, the end of its wait; holding, its last renewal + ttl."""
        self.why_not = "no owner"

    def want(self, owner: str, ttl_s: float, until_mono: float) -> None:
        self.owner, self.owner_ttl_s, self.until_mono = owner, ttl_s, until_mono

    def renewed(self, now_mono: float) -> None:
        self.until_mono = now_mono + self.owner_ttl_s

    def withdraw(self, why: str) -> None:
        self.owner, self.until_mono, self.why_not = None, -math.inf, why

    def blocked_reason(self, now_mono: float) -> str | None:
        if self.owner is None:
            return self.why_not
        if now_mono >= self.until_mono:
            return "owner stopped renewing within its ttl"
        if self.app is not None and self.app.ttl_s is not None:
            alive = self.app.view(now_mono).alive
            if not alive:
                return "app heartbeat missed"
        return None

    def term_end_reason(self, started_mono: float, now_mono: float) -> str | None:
        """Why a key's term begun at `started_mono` is over by `now_mono` (the Elector asks this
        at every decision and in `is_leader`). The election's rule L3 for the app's liveness: a
        lapse of --app-heartbeat-ttl since the term began ends it from that moment, for good,
        even once a late heartbeat has covered the lapse; then this gate now (the owner's ttl, the
        app alive). An app's resign of the election is not its liveness: it leaves locks alone."""
        # Not the app's own term_end_reason: it would also end every key's term on a resign.
        lapse = self.app.lapse_since(started_mono) if self.app is not None else None
        return lapse or self.blocked_reason(now_mono)

    def leading_until_mono(self) -> float | None:
        """K2: when the owner's claim ends unless renewed (None without an owner): its last renewal
        + ttl or, with --app-heartbeat-ttl, the app's last heartbeat + that TTL, the earlier."""
        if self.owner is None:
            return None
        app_until = self.app.leading_until_mono() if self.app is not None else None
        return self.until_mono if app_until is None else min(self.until_mono, app_until)

    def next_change_mono(self, now_mono: float) -> float | None:
        if self.owner is None or now_mono >= self.until_mono:
            return None
        app_change = self.app.next_change_mono(now_mono) if self.app is not None else None
        return min(self.until_mono, app_change) if app_change is not None else self.until_mono


class KeyElector(Elector):
    """The election's Elector for one key, with K3 (F3 bounded by the watch's age) and K4 (tokens
    from resourceVersions). Its identity is set per owner, only while it holds no term."""

    def __init__(self, pod_identity: str, config: ElectionConfig, gate: OwnerGate) -> None:
        super().__init__(pod_identity, config, gate=gate)
        self.pod_identity = pod_identity
        self.owner_gate = gate
        self.watched_since_mono: float | None = None
        """K3: since when every lock Lease of the election has been watched without a gap (None:
        not now). Set by the driver before each observation."""
        self.version_floor = 0
        """K4: the highest store version that showed the key absent (a token is never below it)."""
        self.promised_until_mono = -math.inf
        """K7: the latest deadline told to an owner of this key; no release is written before it."""

    def set_owner(self, owner: str) -> None:
        if self._term is not None:
            raise RuntimeError("the owner of a key changes only between terms")
        self.identity = f"{self.pod_identity}/{owner}"

    def lost_sight(self) -> None:
        """The watch broke: what was observed may be stale. The next decision reads the Lease first
        (K3), so it acts on the Lease as it is now and a creation's token is raised above the
        version of the read that showed it absent (K4)."""
        self._needs_read = True

    def promise_owner(self, now_mono: float) -> float:
        """K2: the deadline to tell the owner now (`now_mono` once the term is over), remembered
        as a promise no release may break (K7). Every answer that carries a deadline asks here."""
        until = now_mono
        if self.is_leader(now_mono):
            gate_until = self.owner_gate.leading_until_mono()
            until = self.valid_until_mono if gate_until is None else min(self.valid_until_mono, gate_until)
        self.promised_until_mono = max(self.promised_until_mono, until)
        return until

    def owner_released(self) -> None:
        """K7: the owner let go itself (its work stopped): its deadlines hold the release no longer."""
        self.promised_until_mono = -math.inf

    def held_release(self, now_mono: float) -> Wait | None:
        """K7 through the Elector's own hook for held releases (P2's): every release of a key's
        term waits until every deadline told to its owner has passed. The election's P2 holds
        nothing here (no status board publishes a key's view), and is kept if it ever does."""
        held = super().held_release(now_mono)
        if now_mono < self.promised_until_mono and (held is None or held.until_mono < self.promised_until_mono):
            return Wait(self.promised_until_mono, "the owner was told it holds the lock until then (K7)",
                        holds_release=True)
        return held

    def handover_requested(self, record: LeaseRecord) -> str | None:
        """K8: a lock has no successors. A hand-over request written on its Lease (the handover-to
        annotation of `lease-sidecar handover`, or a preferredHolder) is ignored: the owner keeps
        the lock, and the request stays on the record until the lock's release clears it."""
        return None

    def has_term(self) -> bool:
        return self._term is not None

    def owes_release(self) -> bool:
        """A record naming this process that a release should still clear."""
        return self._handing_over or (self._closing and not self._done)

    def fenced_until(self, now: Moment) -> tuple[float, str]:
        """The latest fence ahead (for a 409's Retry-After), or (-inf, "")."""
        return self._fence(now)

    @property
    def observed_record(self) -> LeaseRecord | None:
        return self._observed.record if self._observed is not None else None

    @property
    def observed_version(self) -> str | None:
        return self._observed.version if self._observed is not None else None

    def _raise_fence(self, key: HolderKey | None, until_mono: float, why: str) -> None:
        if key is UNSEEN_HOLDER and self.watched_since_mono is not None:
            # K3: a holder never seen wrote its last record before the watch's list.
            until_mono = min(until_mono, self.watched_since_mono + self.config.lease_ttl_s)
        super()._raise_fence(key, until_mono, why)

    def _new_term_record(self, old: LeaseRecord | None, now: Moment, *rest: Any) -> LeaseRecord:
        # `rest`: whatever else the Elector's own rule takes (its resourceVersion floor); K4 is
        # applied on top, so both rules hold whichever the Elector has.
        record = super()._new_term_record(old, now, *rest)
        floor = self.version_floor
        if old is not None and self._observed is not None and self._observed.version.isdigit():
            floor = max(floor, int(self._observed.version))
        return replace(record, fencing_token=max(record.fencing_token or 0, floor))


class RequestRate:
    """A token bucket: `rate_per_s` requests per second on average, bursts of `burst`."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at_mono: float | None = None

    def take(self, now_mono: float) -> float:
        """0.0 if the request may go now (and counts it); else the seconds until one may."""
        if self._at_mono is not None:
            self._tokens = min(self.burst, self._tokens + (now_mono - self._at_mono) * self.rate_per_s)
        self._at_mono = now_mono
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


@dataclass(frozen=True)
class LockLimits:
    max_keys: int
    """Keys this pod may hold or be acquiring at once (429 beyond)."""
    rate_per_s: float
    """Lock requests per second per pod, on average (429 with Retry-After beyond)."""
    burst: int
    gc_after_s: float
    """K6: a released key's Lease is deleted after showing the release this long."""


@dataclass(frozen=True)
class LockEvent:
    """From the lock Leases' list + watch. `listed`: the whole set (`items`) at `version`;
    `opened`: a watch request was answered, every change after `version` follows; `changed` /
    `deleted`: one Lease (`lease`, the raw object); `bookmark`: only the stream's version moved.
    `version` is the stream's resourceVersion after the event."""

    kind: str
    version: str
    name: str = ""
    lease: dict[str, Any] | None = None
    items: list[dict[str, Any]] = field(default_factory=list)


def lease_key(lease: dict[str, Any]) -> str | None:
    """The original key a lock Lease carries, if any."""
    key = ((lease.get("metadata") or {}).get("annotations") or {}).get(KEY_ANNOTATION)
    return key if isinstance(key, str) else None


def lease_name(lease: dict[str, Any]) -> str:
    return str((lease.get("metadata") or {}).get("name") or "")
