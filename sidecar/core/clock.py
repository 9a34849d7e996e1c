"""Time as the election sees it: monotonic for decisions, wall only for display."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sidecar.core.election import Moment


class Clock(Protocol):
    def now(self) -> Moment: ...


class SystemClock:
    def now(self) -> Moment:
        return Moment(time.monotonic(), datetime.now(UTC))


def wall_at(now: Moment, mono: float) -> datetime:
    """The wall time that corresponds to monotonic `mono`, as seen from `now`."""
    return now.wall + timedelta(seconds=mono - now.mono)


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
