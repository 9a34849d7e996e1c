"""The app's liveness, as the election's gate (sans-IO): fed moments and observations, answers
whether this candidate may lead now.

Rules (all by this process's monotonic clock; the app's heartbeats carry no time of their own):

* Without an app heartbeat TTL (`--app-heartbeat-ttl` unset) the app is not consulted: the
  candidate may lead unless it is sitting out a resign.
* With a TTL, the candidate may lead only while its app's last heartbeat (a `POST /heartbeat`, or
  a passing probe of `--app-health-url`) is younger than the TTL. A standby does not campaign
  before that; a leader whose app falls silent steps down (standby published, then the lease
  released) and campaigns again only after a fresh heartbeat.
* A resign ends the current term whatever the sit-out (`term_end_reason`), then sits out: no
  leading until `sit_out_s` has passed since the resign and, with a TTL, until the app has
  heartbeated *after* that. An app that resigns as it shuts down never heartbeats again, so its
  candidate never returns; one that resigned by choice returns with its first heartbeat after the
  sit-out. A sit-out of 0 is none at all: the term ends, and the candidate may campaign at once.
* A term ends at the first moment its app forbade leading (a resign, or its TTL lapsing), even
  if the app heartbeats again before the Elector acts on it: a late heartbeat, or a renewal in
  flight, never brings an ended term back (`term_end_reason` remembers the latest resign and the
  latest lapse).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sidecar.core.config import ConfigError

AppInfo = dict[str, Any]
"""What the app said in its last heartbeat body (the seed's `update_info`): schedule_count,
next_due_task, detail. Validated by the HTTP layer; kept as given."""


@dataclass(frozen=True)
class AppView:
    """What publishers show about the app. `*_mono` are monotonic; walls are for people."""

    required: bool
    """An app heartbeat TTL is set: leadership follows the app's liveness."""
    ttl_s: float | None
    last_heartbeat_wall: datetime | None
    since_last_heartbeat_s: float | None
    alive: bool | None
    """None without a TTL (nothing to judge by)."""
    info: AppInfo
    heartbeats: int
    sit_out_until_mono: float | None
    """Set while sitting out a resign (and, with a TTL, until the next heartbeat after it)."""


class AppLiveness:
    """One candidate's app. Not thread-safe; call from one task."""

    def __init__(self, ttl_s: float | None = None) -> None:
        if ttl_s is not None and not (math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"ttl_s: must be a positive number of seconds; got {ttl_s!r}")
        self.ttl_s = ttl_s
        self._last_mono: float | None = None
        self._last_wall: datetime | None = None
        self._info: AppInfo = {}
        self.heartbeats = 0
        self._sit_out_until_mono: float | None = None
        self._resigned_mono: float | None = None
        """When the app last resigned: it ends any term begun before."""
        self._lapsed_mono: float | None = None
        """The latest moment the app's TTL lapsed, recorded when the next heartbeat came late."""
        self._lapse_reason = ""

    # ------------------------------------------------------------------ observations

    def beat(self, now_mono: float, now_wall: datetime, info: AppInfo | None = None) -> None:
        """The app said it is alive; `info` (if given) replaces the last info."""
        if self.ttl_s is not None and self._last_mono is not None and now_mono - self._last_mono >= self.ttl_s:
            self._lapsed_mono = self._last_mono + self.ttl_s  # a term running then ended then
            self._lapse_reason = self._missed_reason(now_mono)
        self._last_mono, self._last_wall = now_mono, now_wall
        self.heartbeats += 1
        if info is not None:
            self._info = info

    def probe(self, now_mono: float, now_wall: datetime, ok: bool) -> None:
        """A probe of the app's health URL: a pass counts as a heartbeat, a failure as silence."""
        if ok:
            self.beat(now_mono, now_wall)

    def resign(self, now_mono: float, sit_out_s: float) -> None:
        """End the current term now and sit out (see the module's rules). Never shortens a sit-out;
        a sit-out of 0 adds none."""
        self._resigned_mono = now_mono
        if sit_out_s <= 0:
            return
        until = now_mono + sit_out_s
        self._sit_out_until_mono = max(until, self._sit_out_until_mono or until)

    # ------------------------------------------------------------------ decisions

    def allows_leading(self, now_mono: float) -> bool:
        """May this candidate lead (and campaign) now? A leader steps down the moment it is not."""
        return self.blocked_reason(now_mono) is None

    def blocked_reason(self, now_mono: float) -> str | None:
        if self._sitting_out(now_mono):
            return "resigned"
        if self.ttl_s is None:
            return None
        if self._last_mono is None:
            return "app has not heartbeated yet"
        if now_mono - self._last_mono >= self.ttl_s:
            return self._missed_reason(now_mono)
        return None

    def term_end_reason(self, started_mono: float, now_mono: float) -> str | None:
        """Why a term begun at `started_mono` has ended by `now_mono` on the app's account (None:
        the app lets it go on): a resign since it began, a lapse of the TTL since it began (even
        one a later heartbeat has covered), or a gate closed now."""
        if self.resigned_since(started_mono):
            return "resigned"
        return self.lapse_since(started_mono) or self.blocked_reason(now_mono)

    def resigned_since(self, started_mono: float) -> bool:
        """Did the app resign at or after `started_mono`? A term begun then was given up by the app
        itself (election.py P2: its release need not wait for the deadline the app was told)."""
        return self._resigned_mono is not None and self._resigned_mono >= started_mono

    def lapse_since(self, started_mono: float) -> str | None:
        """Why the app's liveness lapsed at or after `started_mono`, if it did: the latest lapse of
        the TTL that a heartbeat has since covered (it came late), so a term begun before it is
        over from then for good (rule L3). None if there was none since (or no TTL). A lapse still
        going on (no heartbeat yet) is `blocked_reason`'s; a resign is not a lapse
        (`resigned_since`): keyed locks end their terms on the app's lapses only."""
        if self._lapsed_mono is not None and self._lapsed_mono >= started_mono:
            return self._lapse_reason
        return None

    def leading_until_mono(self) -> float | None:
        """When the app's TTL lapses unless it heartbeats (None without a TTL or a heartbeat): the
        driver arms a timer for it, as for the renew deadline."""
        if self.ttl_s is None or self._last_mono is None:
            return None
        return self._last_mono + self.ttl_s

    def _missed_reason(self, now_mono: float) -> str:
        last = self._last_mono if self._last_mono is not None else now_mono
        return f"app heartbeat missed (none for {now_mono - last:.3g}s, ttl {self.ttl_s:g}s)"

    def next_change_mono(self, now_mono: float) -> float | None:
        """When `allows_leading` flips by itself (no new observation); None if only a heartbeat can
        flip it. The driver wakes then: a leader to step down on time, a standby to campaign."""
        until = self._sit_out_until_mono
        if self._sitting_out(now_mono) and until is not None:
            return until if now_mono < until else None
        if self.ttl_s is not None and self._last_mono is not None and now_mono - self._last_mono < self.ttl_s:
            return self._last_mono + self.ttl_s
        return None

    def view(self, now_mono: float) -> AppView:
        since = None if self._last_mono is None else max(0.0, now_mono - self._last_mono)
        alive = None
        if self.ttl_s is not None:
            alive = since is not None and since < self.ttl_s
        return AppView(required=self.ttl_s is not None, ttl_s=self.ttl_s, last_heartbeat_wall=self._last_wall,
                       since_last_heartbeat_s=since, alive=alive, info=self._info, heartbeats=self.heartbeats,
                       sit_out_until_mono=self._sit_out_until_mono if self._sitting_out(now_mono) else None)

    # ------------------------------------------------------------------ internals

    def _sitting_out(self, now_mono: float) -> bool:
        until = self._sit_out_until_mono
        if until is None:
            return False
        if now_mono < until:
            return True
        if self.ttl_s is not None and (self._last_mono is None or self._last_mono <= until):
            return True  # with a TTL, only a heartbeat after the sit-out ends it
        self._sit_out_until_mono = None
        return False


def check_app_ttl(ttl_s: float | None, heartbeat_interval_s: float, health_url: str) -> None:
    """Raises ConfigError (one line naming the flag) unless the app settings make sense."""
    if ttl_s is not None and ttl_s <= heartbeat_interval_s:
        raise ConfigError("--app-heartbeat-ttl", f"must be greater than --heartbeat-interval ({ttl_s:g}s <= "
                                                 f"{heartbeat_interval_s:g}s): a probe or heartbeat per interval "
                                                 "would otherwise miss it")
    if health_url:
        parse_health_url(health_url)
        if ttl_s is None:
            raise ConfigError("--app-health-url", "needs --app-heartbeat-ttl (how long a failing app may keep "
                                                  "leadership)")


def parse_health_url(url: str) -> tuple[str, int, str]:
    """`http://127.0.0.1:PORT/path` (or [::1], localhost): the app's own loopback, plain HTTP."""
    parsed = urlsplit(url)
    rule = "must be http://127.0.0.1:PORT/path (plain HTTP on the pod's loopback)"
    if parsed.scheme != "http" or parsed.username or parsed.password or parsed.fragment:
        raise ConfigError("--app-health-url", f"{rule}; got {url[:80]!r}")
    host = parsed.hostname or ""
    try:
        port = parsed.port
    except ValueError:
        port = None
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback or port is None:
        raise ConfigError("--app-health-url", f"{rule}; got {url[:80]!r}")
    return host, port, parsed.path or "/"
