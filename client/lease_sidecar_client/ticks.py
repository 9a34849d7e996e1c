"""Ticks from a shared anchor: every leader computes the same scheduled times, so the ledger can
claim each once. A tick is a scheduled time (an aware datetime), never "now" of some scheduler:
ticks counted from a scheduler's own start differ between two leaders and never match.

    Interval(every_s=60, anchor=datetime(2026, 1, 1, tzinfo=UTC))   # anchor + k * 60 s, k >= 0
    Cron("*/5 * * * *")                                              # 5-field cron, UTC by default
    Cron("30 2 * * mon-fri", tz="Europe/Berlin")

Catching up (what a new leader runs after its predecessor stopped), as APScheduler and Celery beat
users know it (`missed_ticks`): the ticks due after the latest one claimed in the ledger, up to now;
those more than `misfire_grace_s` late are dropped (None: no limit, APScheduler's
`misfire_grace_time=None`); with `coalesce` (APScheduler's `coalesce=True`, Celery beat's behaviour)
only the latest of them runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo

__all__ = ["CatchUp", "Cron", "CronError", "Interval", "Schedule", "due_ticks", "missed_ticks", "plan_catch_up"]

MAX_TICKS = 100_000
"""Ticks one call enumerates at most (a long outage of a per-second job, uncoalesced)."""


class Schedule(Protocol):
    def next_after(self, moment: datetime) -> datetime | None:
        """The first tick strictly after `moment` (None: no more ticks)."""
        ...


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name}: must be timezone-aware (ticks are instants; a naive time means different"
                         " instants on machines with different zones)")
    return moment


@dataclass(frozen=True)
class Interval:
    """Ticks at `anchor + k * every_s` for k >= 0: the anchor is fixed (a start date in the app's
    configuration), never the scheduler's start."""

    every_s: float
    anchor: datetime

    def __post_init__(self) -> None:
        if not (self.every_s > 0 and math.isfinite(self.every_s)):
            raise ValueError(f"every_s: must be a finite number > 0, not {self.every_s!r}")
        _aware(self.anchor, "anchor")

    def _at(self, k: int) -> datetime:
        # Whole microseconds from the anchor: the same k gives the same instant on every machine.
        return self.anchor + timedelta(microseconds=round(k * self.every_s * 1_000_000))

    def next_after(self, moment: datetime) -> datetime:
        _aware(moment, "moment")
        if moment < self.anchor:
            return self.anchor
        k = math.floor((moment - self.anchor).total_seconds() / self.every_s)
        for candidate in (k, k + 1, k + 2):  # float division may be one off either way
            tick = self._at(max(candidate, 0))
            if tick > moment:
                return tick
        raise AssertionError("unreachable")

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        _aware(moment, "moment")
        if moment < self.anchor:
            return None
        k = math.floor((moment - self.anchor).total_seconds() / self.every_s)
        for candidate in (k + 1, k, k - 1):
            if candidate >= 0 and self._at(candidate) <= moment:
                return self._at(candidate)
        return self.anchor


class CronError(ValueError):
    pass


_MONTHS = {name: number for number, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_DAYS = {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, _MONTHS),
           ("day of week", 0, 7, _DAYS))
_ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
            "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


def _parse_field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    def value(word: str) -> int:
        word = word.lower()
        if word in names:
            return names[word]
        if not word.isdigit():
            raise CronError(f"cron {name}: {word!r} is not a number{' or a name' if names else ''}")
        number = int(word)
        if not low <= number <= high:
            raise CronError(f"cron {name}: {number} outside {low}-{high}")
        return number

    chosen: set[int] = set()
    for part in text.split(","):
        spec, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"cron {name}: step {step_text!r} must be a whole number > 0")
            step = int(step_text)
        if spec == "*":
            first, last = low, high
        elif "-" in spec:
            first_text, _, last_text = spec.partition("-")
            first, last = value(first_text), value(last_text)
            if first > last:
                raise CronError(f"cron {name}: range {spec!r} runs backwards")
        else:
            first = value(spec)
            last = high if step_text else first  # "5/15" means 5-59/15, as in Vixie cron
        chosen.update(range(first, last + 1, step))
    return frozenset(chosen)


@dataclass(frozen=True)
class Cron:
    """A 5-field cron expression (minute hour day-of-month month day-of-week; `*`, lists, ranges,
    steps, month and day names, 7 = Sunday, @hourly/@daily/...), in the time zone `tz` (UTC by
    default). As in Vixie cron, when both day fields are restricted a day matching either runs.
    Across a DST change in `tz`: a wall time that does not exist that day is skipped; one that
    occurs twice runs once (its first occurrence)."""

    expression: str
    tz: str = "UTC"
    _fields: tuple[frozenset[int], ...] = field(init=False, repr=False, compare=False)
    _zone: tzinfo = field(init=False, repr=False, compare=False)
    _restricted_days: tuple[bool, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = _ALIASES.get(self.expression.strip().lower(), self.expression)
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"cron: {self.expression!r} must have 5 fields (minute hour day month weekday)")
        fields = [_parse_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        fields[4] = frozenset(day % 7 for day in fields[4])
        object.__setattr__(self, "_fields", tuple(fields))
        object.__setattr__(self, "_zone", UTC if self.tz.upper() == "UTC" else ZoneInfo(self.tz))
        object.__setattr__(self, "_restricted_days", (parts[2] != "*", parts[4] != "*"))

    def _day_matches(self, day: datetime) -> bool:
        _minutes, _hours, days, months, weekdays = self._fields
        if day.month not in months:
            return False
        dom_restricted, dow_restricted = self._restricted_days
        in_month, in_week = day.day in days, (day.isoweekday() % 7) in weekdays
        if dom_restricted and dow_restricted:
            return in_month or in_week
        return in_month and in_week

    def next_after(self, moment: datetime) -> datetime | None:
        _aware(moment, "moment")
        minutes, hours, _days, _months, _weekdays = self._fields
        local = moment.astimezone(self._zone).replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
        give_up = local + timedelta(days=366 * 5)  # e.g. "0 0 30 2 *" never comes
        while local <= give_up:
            if not self._day_matches(local):
                local = (local + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if local.hour not in hours:
                local = (local + timedelta(hours=1)).replace(minute=0)
                continue
            if local.minute not in minutes:
                local += timedelta(minutes=1)
                continue
            tick = local.replace(tzinfo=self._zone, fold=0)
            exists = tick.astimezone(UTC).astimezone(self._zone).replace(tzinfo=None) == local
            if exists and tick > moment:
                return tick.astimezone(UTC)
            local += timedelta(minutes=1)
        return None


def due_ticks(schedule: Schedule, since: datetime, until: datetime, limit: int = MAX_TICKS) -> Iterator[datetime]:
    """The ticks in (since, until], oldest first, at most `limit`."""
    _aware(since, "since")
    _aware(until, "until")
    moment, count = since, 0
    while count < limit:
        tick = schedule.next_after(moment)
        if tick is None or tick > until:
            return
        yield tick
        moment, count = tick, count + 1


@dataclass(frozen=True)
class CatchUp:
    run: list[datetime]
    """The ticks to run now, oldest first (claim each in the ledger before its job runs)."""
    too_late: list[datetime]
    """Dropped: more than the misfire grace late."""
    coalesced: list[datetime]
    """Dropped: within the grace, but folded into the latest run (coalesce)."""


def plan_catch_up(schedule: Schedule, last_claimed: datetime | None, now: datetime,
                  misfire_grace_s: float | None = None, coalesce: bool = True,
                  first_since: datetime | None = None, limit: int = MAX_TICKS) -> CatchUp:
    """Which ticks are due at `now` after `last_claimed` (the latest tick of the job in the ledger).
    A job never claimed starts at `first_since` (default: `now` less the misfire grace, or only the
    ticks due exactly now when there is no grace): a new job does not replay its past."""
    _aware(now, "now")
    if last_claimed is None:
        if first_since is None:
            first_since = now - timedelta(seconds=misfire_grace_s) if misfire_grace_s is not None else now
        since = first_since - timedelta(microseconds=1)  # a tick exactly at first_since is due
    else:
        since = _aware(last_claimed, "last_claimed")
    if misfire_grace_s is not None and not misfire_grace_s >= 0:
        raise ValueError(f"misfire_grace_s: must be >= 0 or None, not {misfire_grace_s!r}")
    oldest_allowed = None if misfire_grace_s is None else now - timedelta(seconds=misfire_grace_s)
    too_late: list[datetime] = []
    in_time: list[datetime] = []
    latest = getattr(schedule, "latest_at_or_before", None)
    if oldest_allowed is not None and oldest_allowed > since and latest is not None:
        # Skip the long tail arithmetically (an interval knows its k): count nothing older than the grace.
        dropped_until = latest(oldest_allowed - timedelta(microseconds=1))
        if dropped_until is not None and dropped_until > since:
            too_late.append(dropped_until)  # the latest of those dropped, as a marker
            since = dropped_until
    for tick in due_ticks(schedule, since, now, limit):
        (too_late if oldest_allowed is not None and tick < oldest_allowed else in_time).append(tick)
    if coalesce and len(in_time) > 1:
        return CatchUp(run=in_time[-1:], too_late=too_late, coalesced=in_time[:-1])
    return CatchUp(run=in_time, too_late=too_late, coalesced=[])


def missed_ticks(schedule: Schedule, last_claimed: datetime | None, now: datetime,
                 misfire_grace_s: float | None = None, coalesce: bool = True,
                 first_since: datetime | None = None) -> list[datetime]:
    """The ticks to run at `now` (see `plan_catch_up`), oldest first."""
    return plan_catch_up(schedule, last_claimed, now, misfire_grace_s, coalesce, first_since).run
