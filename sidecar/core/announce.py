"""Which election Events to send, and how (sans-IO): no storms.

Two rules, fed the monotonic time:

* **Series.** A reason seen again within `series_window_s` of the event that opened its series is
  not a new Event: the existing one gets `series.count` + 1 and a new `lastObservedTime` (a
  patch), as events.k8s.io/v1 intends. After the window a new Event opens a new series.
* **Rate limit.** A token bucket (`burst` Events at once, then one per `refill_s`) shared by all
  reasons; creations and series patches both spend a token. Without a token the Event is dropped
  (and counted), never queued: a flapping election must not turn into an API storm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.core.election import TermEnd

REPORTING_CONTROLLER = "lease-sidecar"

BECAME_LEADER = "BecameLeader"
LOST_LEADERSHIP = "LostLeadership"
RELEASED = "Released"
HANDOVER_REQUESTED = "HandoverRequested"


@dataclass(frozen=True)
class Create:
    reason: str


@dataclass(frozen=True)
class Extend:
    """Patch the series of the Event `name` to `count`."""

    reason: str
    name: str
    count: int


@dataclass(frozen=True)
class Drop:
    reason: str


EventDecision = Create | Extend | Drop


@dataclass
class _Series:
    name: str
    opened_mono: float
    count: int


@dataclass
class EventPolicy:
    burst: int = 10
    """Events that may go out at once after a quiet spell."""
    refill_s: float = 10.0
    """One more Event allowed per this many seconds, up to `burst`."""
    series_window_s: float = 600.0
    """A repeat of a reason within this long of its series' first Event extends that series."""
    dropped: int = 0
    _tokens: float = field(default=-1.0, repr=False)
    _refilled_mono: float | None = field(default=None, repr=False)
    _series: dict[str, _Series] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.burst < 1 or self.refill_s <= 0 or self.series_window_s <= 0:
            raise ValueError("EventPolicy: burst >= 1, refill_s > 0 and series_window_s > 0 required")
        self._tokens = float(self.burst)

    def decide(self, reason: str, now_mono: float) -> EventDecision:
        """What to do with an Event of `reason` now. Spends a token unless the answer is Drop."""
        self._refill(now_mono)
        if self._tokens < 1:
            self.dropped += 1
            return Drop(reason)
        self._tokens -= 1
        series = self._series.get(reason)
        if series is not None and now_mono - series.opened_mono < self.series_window_s:
            series.count += 1
            return Extend(reason, series.name, series.count)
        self._series.pop(reason, None)
        return Create(reason)

    def created(self, reason: str, name: str, now_mono: float) -> None:
        """The Event of a Create decision exists as `name`: later repeats extend its series."""
        self._series[reason] = _Series(name, now_mono, 1)

    def failed(self, reason: str) -> None:
        """A Create or Extend did not land (error, 404): the next repeat opens a new series."""
        self._series.pop(reason, None)

    def _refill(self, now_mono: float) -> None:
        if self._refilled_mono is None:
            self._refilled_mono = now_mono
            return
        elapsed = max(0.0, now_mono - self._refilled_mono)
        self._tokens = min(float(self.burst), self._tokens + elapsed / self.refill_s)
        self._refilled_mono = now_mono


VOLUNTARY_PREFIXES = ("shutting down", "handed over", "handing over", "resigned", "released")
"""Term end reasons (election.TermEnd.reason) that mean the leader let go on purpose."""


def own_end_reason(end: TermEnd | None, token: int | None) -> str | None:
    """The end reason of the term with `token` (the one just left), never another term's: an
    earlier term's reason must not describe a term lost at its deadline before the Elector noticed."""
    if end is None or token is None or end.fencing_token != token:
        return None
    return end.reason


@dataclass(frozen=True)
class Announcement:
    reason: str
    type: str
    """"Normal" or "Warning"."""
    action: str
    note: str


def role_change_announcement(was_leader: bool, is_leader: bool, identity: str, token: int | None,
                             loss_reason: str | None) -> Announcement | None:
    """The Event for a change of this candidate's role, if any."""
    if is_leader and not was_leader:
        return Announcement(BECAME_LEADER, "Normal", "Acquire", f"{identity} became leader (term {token})")
    if was_leader and not is_leader:
        why = loss_reason or "ended for an unknown reason"  # unknown is not voluntary: a Warning
        if why.startswith(VOLUNTARY_PREFIXES):
            return Announcement(RELEASED, "Normal", "Release", f"{identity} released the lease: {why}")
        return Announcement(LOST_LEADERSHIP, "Warning", "Lose", f"{identity} lost leadership: {why}")
    return None


def handover_announcement(identity: str, successor: str, source: str) -> Announcement:
    return Announcement(HANDOVER_REQUESTED, "Normal", "Handover",
                        f"hand-over of {identity}'s leadership to {successor} requested ({source})")
