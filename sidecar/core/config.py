"""Election timing, validated once at construction (client-go style: one line naming the field).

Units are seconds throughout (`*_s`). Defaults are the seed's HeartbeatConfig.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """An invalid setting. `field` is the option's name; str(self) is the one-line rule."""

    def __init__(self, field_name: str, rule: str) -> None:
        super().__init__(f"{field_name}: {rule}")
        self.field = field_name
        self.rule = rule


def parse_duration_s(value: object, field_name: str = "duration") -> float:
    """Seconds from `4`, `0.5`, `500ms`, `5s`, `1m`, `1h` (or a number)."""
    if isinstance(value, bool):
        raise ConfigError(field_name, f"expected a duration like 4, 0.5, 500ms, 5s or 1m; got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(field_name, f"expected a duration like 4, 0.5, 500ms, 5s or 1m; got {value!r}")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(field_name, f"must be a positive duration; got {value!r}")
    return seconds


def _fmt(seconds: float) -> str:
    return f"{seconds:g}s"


@dataclass(frozen=True)
class ElectionConfig:
    """Timing of the election. Safety hinges on renew_deadline_s < lease_ttl_s (see Elector)."""

    lease_ttl_s: float = 30.0
    """`--leader-lease-ttl`: written as leaseDurationSeconds, so whole seconds. Others may take the
    lease this long after they last saw it change; a crashed leader's failover costs this much."""
    renewal_interval_s: float = 10.0
    """`--leader-renewal-interval`: a leader renews this long after its last successful renewal."""
    renew_deadline_s: float | None = None
    """`--leader-renew-deadline`: a leader reports standby this long after the *start* of its last
    successful renewal. Unset: midway between the renewal interval and the TTL."""
    heartbeat_interval_s: float = 5.0
    """`--heartbeat-interval`: how often the role file and status are refreshed (their mtime is the
    sidecar's pulse) and heartbeats_sent counts."""
    heartbeat_ttl_s: float = 15.0
    """`--heartbeat-ttl`: a consumer should distrust a role file older than this (published in
    status.json as `stale_after_seconds`)."""
    failover_timeout_s: float = 45.0
    """`--failover-timeout`: each watch request asks the server to end it after this long, and it
    is then resumed from the last version seen; a socket silent for longer counts as broken, which
    bounds how late a silently stalled watch can make a standby notice a released lease."""
    request_timeout_s: float | None = None
    """Per API call. Unset: min(5, renew_deadline - renewal_interval). A leader's renewal is further
    capped by the time it has left."""
    handover_drain_timeout_s: float = 0.0
    """`--handover-drain-timeout`: on a graceful release (SIGTERM, a hand-over) the leader keeps
    leading, `draining`, until its app resigns or this long has passed; 0 is off (release at once).
    That it fits the pod's terminationGracePeriodSeconds, with the renew deadline, is the user's
    to check: the sidecar cannot see it."""

    def __post_init__(self) -> None:
        for name in ("lease_ttl_s", "renewal_interval_s", "heartbeat_interval_s", "heartbeat_ttl_s",
                     "failover_timeout_s"):
            parse_duration_s(getattr(self, name), FLAG_NAMES[name])
        if self.lease_ttl_s != int(self.lease_ttl_s):
            raise ConfigError(FLAG_NAMES["lease_ttl_s"], "must be whole seconds (leaseDurationSeconds is an "
                                                         f"integer); got {_fmt(self.lease_ttl_s)}")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ConfigError(FLAG_NAMES["heartbeat_ttl_s"],
                              f"must be greater than --heartbeat-interval ({_fmt(self.heartbeat_ttl_s)} <= "
                              f"{_fmt(self.heartbeat_interval_s)})")
        if self.lease_ttl_s <= self.renewal_interval_s:
            raise ConfigError(FLAG_NAMES["lease_ttl_s"],
                              f"must be greater than --leader-renewal-interval ({_fmt(self.lease_ttl_s)} <= "
                              f"{_fmt(self.renewal_interval_s)})")
        if self.failover_timeout_s <= self.lease_ttl_s:
            raise ConfigError(FLAG_NAMES["failover_timeout_s"],
                              f"must be greater than --leader-lease-ttl ({_fmt(self.failover_timeout_s)} <= "
                              f"{_fmt(self.lease_ttl_s)})")
        deadline = self.renew_deadline
        if self.renew_deadline_s is not None:
            parse_duration_s(self.renew_deadline_s, FLAG_NAMES["renew_deadline_s"])
            if not self.renewal_interval_s < deadline < self.lease_ttl_s:
                raise ConfigError(FLAG_NAMES["renew_deadline_s"],
                                  f"must be greater than --leader-renewal-interval and less than "
                                  f"--leader-lease-ttl (got {_fmt(deadline)}; interval "
                                  f"{_fmt(self.renewal_interval_s)}, ttl {_fmt(self.lease_ttl_s)})")
        if self.request_timeout_s is not None:
            parse_duration_s(self.request_timeout_s, FLAG_NAMES["request_timeout_s"])
        drain = self.handover_drain_timeout_s
        if isinstance(drain, bool) or not isinstance(drain, int | float) or not math.isfinite(drain) or drain < 0:
            raise ConfigError(FLAG_NAMES["handover_drain_timeout_s"],
                              f"must be a duration of 0 (off) or more; got {drain!r}")

    @property
    def renew_deadline(self) -> float:
        if self.renew_deadline_s is not None:
            return self.renew_deadline_s
        return (self.renewal_interval_s + self.lease_ttl_s) / 2

    @property
    def request_timeout(self) -> float:
        if self.request_timeout_s is not None:
            return self.request_timeout_s
        return min(5.0, self.renew_deadline - self.renewal_interval_s)

    @property
    def retry_cap_s(self) -> float:
        """Longest pause between retries after failures (backoff starts at 0.1 s)."""
        return max(0.1, min(2.0, self.renewal_interval_s / 2))


FLAG_NAMES = {
    "lease_ttl_s": "--leader-lease-ttl",
    "renewal_interval_s": "--leader-renewal-interval",
    "renew_deadline_s": "--leader-renew-deadline",
    "heartbeat_interval_s": "--heartbeat-interval",
    "heartbeat_ttl_s": "--heartbeat-ttl",
    "failover_timeout_s": "--failover-timeout",
    "request_timeout_s": "--api-timeout",
    "handover_drain_timeout_s": "--handover-drain-timeout",
}


def split_address(address: str, field_name: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets); ConfigError naming the flag otherwise."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(field_name, f"expected host:port, e.g. 127.0.0.1:4040; got {address!r}")
    return host, int(port)
