"""Celery beat led by the sidecar (extra `celery`, plus `psycopg` for the ledger).

Run `celery beat` in every replica, beside its sidecar:

    celery -A proj beat -S lease_sidecar_client.celery.LeaderScheduler

    # proj/celery.py
    app.conf.lease_sidecar_dsn = "postgresql://..."        # the tick ledger (required)
    app.conf.beat_schedule = {"report": {"task": "proj.report", "schedule": 10.0}}

    from lease_sidecar_client.celery import LeaderTickTask, current_claim

    @app.task(base=LeaderTickTask)
    def report():
        with psycopg.connect(DSN) as conn, current_claim().transaction(conn):
            conn.execute("insert into reports ...")          # commits with the tick's 'finished' mark

Beat side (`LeaderScheduler`): sends only while this pod leads; before sending a due entry it claims
the tick (entry, scheduled time) in the ledger with the term's fencing token, in a fenced
transaction, and the message carries the claim in its headers (`lease_scope`, `lease_job`,
`lease_scheduled_at`, `lease_token`). Ticks come from a shared anchor, never from beat's start:
a `crontab` as it is, a `schedule` (seconds, timedelta) as `anchor + k * run_every`, the anchor being
`lease_sidecar_anchor` (default 1970-01-01T00:00:00Z: the same in every replica). A new leader first
runs what its predecessor missed, from the ledger: ticks after the latest claimed, not more than
`lease_sidecar_misfire_grace_s` late (default 60; None: no limit), only the latest if
`lease_sidecar_coalesce` (default True, as beat does). It heartbeats its sidecar from beat's loop
(schedule_count, next_due_task), so a stuck beat hands leadership on; on a hand-over's drain or at
shutdown it resigns.

Worker side (`LeaderTickTask`): a task sent with a claim runs only if the ledger holds that claim
(the scope, entry and scheduled time, claimed with that token) and it is not finished yet. It
checks the tick's ledger row, not the current leader's token: a task properly queued before a
failover still runs after it. `current_claim().transaction(conn)` marks the tick finished in the
effect's transaction: *exactly once* for that effect (a redelivered message finds it finished and
is skipped; a rolled-back effect leaves it unfinished, so a redelivery runs it). Otherwise the task
base marks it finished after the task returns: *at most once* per tick for what it did elsewhere
(beat never sends a claimed tick again).

Configuration (app.conf, or the environment variable in capitals): `lease_sidecar_dsn` (required),
`lease_sidecar_url` (http://127.0.0.1:4040), `lease_sidecar_scope` (the term's lease),
`lease_sidecar_anchor`, `lease_sidecar_misfire_grace_s`, `lease_sidecar_coalesce`,
`lease_sidecar_heartbeat_interval_s` (1.0).
"""

from __future__ import annotations

import contextvars
import copy
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from celery import Task
from celery.beat import Scheduler
from celery.schedules import crontab
from celery.schedules import schedule as every

from . import psycopg as lease_pg
from ._blocking import DEFAULT_URL, Sidecar
from ._term import StaleToken, Term, TermEnded
from .ticks import Interval, due_ticks, plan_catch_up

__all__ = ["HEADERS", "AlreadyFinished", "Claim", "CrontabSchedule", "LeaderScheduler", "LeaderTickTask",
           "claim_of", "current_claim"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HEADERS = ("lease_scope", "lease_job", "lease_scheduled_at", "lease_token")
DEFAULTS: dict[str, Any] = {
    "lease_sidecar_url": DEFAULT_URL,
    "lease_sidecar_scope": None,
    "lease_sidecar_anchor": EPOCH,
    "lease_sidecar_misfire_grace_s": 60.0,
    "lease_sidecar_coalesce": True,
    "lease_sidecar_heartbeat_interval_s": 1.0,
}

STANDBY_POLL_S = 0.25
"""How often a standby beat asks its sidecar whether it leads now (besides its heartbeats)."""

logger = logging.getLogger("lease_sidecar_client.celery")


def _setting(app: Any, name: str, required: bool = False) -> Any:
    value = app.conf.get(name)
    if value is None:
        value = os.environ.get(name.upper())
    if value is None:
        value = DEFAULTS.get(name)
    if value is None and required:
        raise _ConfigError(f"{name}: required (set app.conf.{name} or {name.upper()})")
    return value


class _ConfigError(ValueError):
    pass


def _config_error(message: str) -> None:
    """Wrong configuration: one line naming the field and the rule, exit code 2."""
    print(f"lease-sidecar: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# ---------------------------------------------------------------- ticks of Celery schedules


@dataclass(frozen=True)
class CrontabSchedule:
    """A Celery `crontab` as a `lease_sidecar_client.ticks.Schedule`, with Celery's meaning: a
    minute runs when minute, hour, day of week, day of month and month all match (both day fields
    restricted: both must match, unlike Vixie cron), in the crontab's time zone (the app's)."""

    cron: crontab

    def next_after(self, moment: datetime) -> datetime | None:
        zone = self.cron.tz
        local = moment.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
        give_up = local + timedelta(days=366 * 5)
        while local <= give_up:
            if (local.month not in self.cron.month_of_year or local.day not in self.cron.day_of_month
                    or local.isoweekday() % 7 not in self.cron.day_of_week):
                local = (local + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if local.hour not in self.cron.hour:
                local = (local + timedelta(hours=1)).replace(minute=0)
                continue
            if local.minute not in self.cron.minute:
                local += timedelta(minutes=1)
                continue
            tick = local.replace(tzinfo=zone, fold=0)
            exists = tick.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == local
            if exists and tick > moment:
                return tick.astimezone(UTC)
            local += timedelta(minutes=1)
        return None


def schedule_of(entry_schedule: Any, anchor: datetime) -> Any:
    """The shared-anchor ticks of a beat entry's schedule; ValueError for one that has none."""
    if isinstance(entry_schedule, crontab):
        return CrontabSchedule(entry_schedule)
    if isinstance(entry_schedule, every):
        seconds = entry_schedule.run_every.total_seconds()
        return Interval(every_s=seconds, anchor=anchor)
    raise ValueError(f"{type(entry_schedule).__name__}: only crontab and schedule (an interval) have ticks every"
                     " replica agrees on")


def _anchor(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise _ConfigError("lease_sidecar_anchor: must be a timezone-aware datetime or ISO 8601 text with an offset")
    return value


def _number_or_none(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _ConfigError(f"{name}: must be a number of seconds >= 0 (or None), not {value!r}") from None
    if not (number >= 0 and math.isfinite(number)):
        raise _ConfigError(f"{name}: must be a number of seconds >= 0 (or None), not {value!r}")
    return number


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise _ConfigError(f"{name}: must be true or false, not {value!r}")


# ---------------------------------------------------------------- beat


class LeaderScheduler(Scheduler):
    """`celery beat -S lease_sidecar_client.celery.LeaderScheduler` (see the module's docstring).
    Keeps beat's own schedule in memory (the ledger is the record of what ran)."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        try:
            self.dsn = str(_setting(app, "lease_sidecar_dsn", required=True))
            self.sidecar = Sidecar(str(_setting(app, "lease_sidecar_url")), request_timeout_s=1.0)
            self.scope = _setting(app, "lease_sidecar_scope")
            self.anchor = _anchor(_setting(app, "lease_sidecar_anchor"))
            self.misfire_grace_s = _number_or_none("lease_sidecar_misfire_grace_s",
                                                   _setting(app, "lease_sidecar_misfire_grace_s"))
            self.coalesce = _flag("lease_sidecar_coalesce", _setting(app, "lease_sidecar_coalesce"))
            heartbeat = _number_or_none("lease_sidecar_heartbeat_interval_s",
                                        _setting(app, "lease_sidecar_heartbeat_interval_s"))
            if not heartbeat:
                raise _ConfigError("lease_sidecar_heartbeat_interval_s: must be a number of seconds > 0")
            self.heartbeat_interval_s = heartbeat
        except _ConfigError as error:
            _config_error(str(error))
        self._conn: psycopg.Connection[Any] | None = None
        self._term: Term | None = None
        self._led_term: Term | None = None
        self._draining = False
        self._next_heartbeat_at = 0.0
        self._cursor: dict[str, datetime] = {}
        self._refused: set[str] = set()
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        super().setup_schedule()
        with self._connection() as conn:
            lease_pg.install(conn)

    # -- the loop

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass of beat's loop: heartbeat when due, then (only while leading) the catch-up of a
        new term and every due tick, each claimed before it is sent. Returns the seconds to sleep."""
        now_monotonic = time.monotonic()
        if now_monotonic >= self._next_heartbeat_at:
            self._heartbeat()
            self._next_heartbeat_at = now_monotonic + self.heartbeat_interval_s
        elif self._term is None and not self._draining:
            # A standby asks between heartbeats too (a GET on localhost), so a hand-over does not
            # wait for the next heartbeat to learn that this pod leads now.
            self._term = self.sidecar.status_and_term()[1]
        until_heartbeat = max(0.0, self._next_heartbeat_at - time.monotonic())
        term = self._term
        if term is None or self._draining or not term.is_valid():
            self._led_term = None
            return min(until_heartbeat, STANDBY_POLL_S, self.max_interval)
        now = datetime.now(UTC)
        scope = self.scope or term.lease
        schedules = self._schedules()
        if not term.same_term(self._led_term):
            self._led_term = term
            self._catch_up(schedules, term, scope, now)
            self._cursor = dict.fromkeys(schedules, now)
        for name, ticks in schedules.items():
            since = self._cursor.get(name, now)
            due = list(due_ticks(ticks, since, now))
            self._cursor[name] = now
            if len(due) > 1 and self.coalesce:
                due = due[-1:]
            for scheduled_at in due:
                self._send(name, scheduled_at, term, scope)
        upcoming = [ticks.next_after(now) for ticks in schedules.values()]
        waits = [(moment - datetime.now(UTC)).total_seconds() for moment in upcoming if moment is not None]
        return max(0.0, min([*waits, until_heartbeat, self.max_interval]))

    def _schedules(self) -> dict[str, Any]:
        result = {}
        for name, entry in self.schedule.items():
            try:
                result[name] = schedule_of(entry.schedule, self.anchor)
            except ValueError as refusal:
                if name not in self._refused:
                    self._refused.add(name)
                    logger.error("beat entry %s refused by LeaderScheduler: %s", name, refusal)
        return result

    def _heartbeat(self) -> None:
        entries = self.schedule
        now = datetime.now(UTC)
        upcoming = []
        for name, ticks in self._schedules().items():
            moment = ticks.next_after(now)
            if moment is not None:
                upcoming.append((moment, name))
        asked_at = time.monotonic()
        status = self.sidecar.heartbeat(schedule_count=len(entries),
                                        next_due_task=min(upcoming)[1] if upcoming else None)
        term = Term.from_status(status, asked_at_monotonic=asked_at)
        if status is not None and status.get("draining") is True:
            if not self._draining:
                logger.info("hand-over requested: beat stops sending and resigns")
            self._draining = True
            self._term = None
            self.sidecar.resign(0)  # beat runs no job itself: nothing to wait for
            return
        self._draining = False
        if term is not None and not term.same_term(self._term):
            logger.info("leading %s with token %d", term.lease, term.fencing_token)
        elif term is None and self._term is not None:
            logger.info("no longer leading: beat stops sending")
        self._term = term

    def _catch_up(self, schedules: dict[str, Any], term: Term, scope: str, now: datetime) -> None:
        for name, ticks in schedules.items():
            try:
                with self._connection() as conn:
                    last = lease_pg.last_tick(conn, scope, name)
            except psycopg.Error as error:
                logger.warning("catch-up of %s skipped, ledger unreachable: %s", name, error)
                continue
            if last is None:
                continue  # never sent anywhere: a new entry does not replay its past
            plan = plan_catch_up(ticks, last, now, misfire_grace_s=self.misfire_grace_s, coalesce=self.coalesce)
            if plan.too_late:
                logger.warning("%s: ticks after %s up to %s missed by more than the misfire grace (%ss): not sent",
                               name, last, plan.too_late[-1], self.misfire_grace_s)
            if plan.run:
                logger.info("%s: catching up %d tick(s) missed since %s%s", name, len(plan.run), last,
                            f" ({len(plan.coalesced)} coalesced)" if plan.coalesced else "")
            for scheduled_at in plan.run:
                self._send(name, scheduled_at, term, scope)

    def _send(self, name: str, scheduled_at: datetime, term: Term, scope: str) -> bool:
        entry = self.schedule.get(name)
        if entry is None:
            return False
        try:
            with self._connection() as conn, lease_pg.fenced_transaction(conn, term, scope=scope):
                claimed = lease_pg.claim_tick(conn, term, name, scheduled_at, scope=scope)
        except (StaleToken, TermEnded) as ended:
            logger.warning("%s at %s not sent: %s", name, scheduled_at.isoformat(), ended)
            self._term = None
            return False
        except psycopg.Error as error:
            logger.error("%s at %s not sent: ledger unreachable: %s", name, scheduled_at.isoformat(), error)
            return False
        if not claimed:
            logger.debug("%s at %s already claimed", name, scheduled_at.isoformat())
            return False
        claim = Claim(scope, name, scheduled_at, term.fencing_token)
        sent = copy.copy(entry)
        sent.options = {**entry.options, "headers": {**entry.options.get("headers", {}), **claim.headers()}}
        logger.info("Scheduler: Sending due task %s (%s) for %s", name, entry.task, scheduled_at.isoformat())
        try:
            self.apply_async(sent, producer=self.producer, advance=False)
        except Exception as error:
            logger.error("%s at %s claimed but not sent (stays in lease_unfinished_ticks): %s", name,
                         scheduled_at.isoformat(), error)
            return False
        self.schedule[name] = entry._next_instance(last_run_at=datetime.now(UTC))
        return True

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
        try:
            yield self._conn
        except psycopg.OperationalError:
            self._conn.close()
            self._conn = None
            raise

    def close(self) -> None:
        try:
            if self._term is not None and self._term.is_valid():
                self.sidecar.resign(0)  # hand over now instead of at the lease's expiry
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            super().close()

    @property
    def info(self) -> str:
        return f"    . lease-sidecar -> {self.sidecar.base_url}, ledger in PostgreSQL"


# ---------------------------------------------------------------- workers


class AlreadyFinished(Exception):
    """The tick is finished already (a redelivered or duplicated message): roll the effect back."""


@dataclass(frozen=True)
class Claim:
    """A beat tick's claim, as its message carries it."""

    scope: str
    job: str
    scheduled_at: datetime
    token: int
    _finished: list[bool] = field(default_factory=lambda: [False], compare=False, repr=False)

    def headers(self) -> dict[str, Any]:
        return {"lease_scope": self.scope, "lease_job": self.job,
                "lease_scheduled_at": self.scheduled_at.isoformat(), "lease_token": self.token}

    def finish(self, conn: psycopg.Connection[Any]) -> bool:
        """Marks the tick finished in `conn`'s current transaction (not fenced: a task queued before a
        failover tells the truth about it). False if it was finished already."""
        done = lease_pg.finish_tick(conn, self.token, self.job, self.scheduled_at, scope=self.scope)
        if done:
            self._finished[0] = True
        return done

    @contextmanager
    def transaction(self, conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
        """A transaction that commits the effect together with the tick's 'finished' mark: exactly
        once per tick. AlreadyFinished (rolled back) if another delivery finished it first."""
        with conn.transaction():
            if not self.finish(conn):
                raise AlreadyFinished(f"{self.job} at {self.scheduled_at.isoformat()} finished already")
            yield conn

    @property
    def finished(self) -> bool:
        return self._finished[0]


_current_claim: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("lease_sidecar_celery_claim",
                                                                              default=None)


def current_claim() -> Claim | None:
    """The claim of the task running now (None for a task not sent by LeaderScheduler)."""
    return _current_claim.get()


def _header(request: Any, name: str) -> Any:
    headers = getattr(request, "headers", None) or {}
    value = headers.get(name) if isinstance(headers, dict) else None
    return value if value is not None else getattr(request, name, None)


def claim_of(request: Any) -> Claim | None:
    """The claim a task's request carries in its headers, or None."""
    values = [_header(request, name) for name in HEADERS]
    if any(value is None for value in values):
        return None
    scope, job, scheduled_at, token = values
    return Claim(str(scope), str(job), datetime.fromisoformat(str(scheduled_at)), int(token))


class _WorkerLedger:
    """One connection per worker thread (prefork: per process) to read and finish ticks."""

    def __init__(self) -> None:
        self._local = threading.local()

    def connection(self, dsn: str) -> psycopg.Connection[Any]:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        return conn

    def row(self, dsn: str, claim: Claim) -> tuple[int, datetime | None] | None:
        try:
            conn = self.connection(dsn)
            return conn.execute("SELECT token, finished_at FROM lease_tick_ledger"
                                " WHERE scope = %s AND job = %s AND scheduled_at = %s",
                                (claim.scope, claim.job, claim.scheduled_at)).fetchone()
        except psycopg.OperationalError:
            self._local.conn = None
            raise


_worker_ledger = _WorkerLedger()


class LeaderTickTask(Task):
    """Task base for tasks LeaderScheduler sends (see the module's docstring): runs a claimed tick
    only if the ledger holds that claim unfinished; marks it finished after success unless the task
    did so in its effect's transaction (`current_claim().transaction(conn)`)."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        claim = claim_of(self.request)
        if claim is None:
            return super().__call__(*args, **kwargs)
        dsn = str(_setting(self.app, "lease_sidecar_dsn", required=True))
        row = _worker_ledger.row(dsn, claim)
        if row is None or row[0] != claim.token:
            logger.warning("%s at %s not run: the ledger holds no such claim (token %d)", claim.job,
                           claim.scheduled_at.isoformat(), claim.token)
            return None
        if row[1] is not None:
            logger.info("%s at %s not run: finished already at %s", claim.job, claim.scheduled_at.isoformat(), row[1])
            return None
        reset = _current_claim.set(claim)
        try:
            result = super().__call__(*args, **kwargs)
        except AlreadyFinished as duplicate:
            logger.info("not run again: %s", duplicate)
            return None
        finally:
            _current_claim.reset(reset)
        if not claim.finished:
            claim.finish(_worker_ledger.connection(dsn))
        return result
