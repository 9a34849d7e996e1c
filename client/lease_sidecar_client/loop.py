"""A plain interval / cron loop for apps without a scheduler: jobs run only while this pod leads,
each tick claimed in the PostgreSQL ledger (extra `psycopg`).

    loop = LeaderLoop(lambda: psycopg.connect(DSN))

    @loop.job(every_s=60, anchor=datetime(2026, 1, 1, tzinfo=UTC))     # exactly once per tick
    def report(tick):
        tick.conn.execute("insert into reports ...")                  # in the claim's transaction

    @loop.job(cron="*/5 * * * *", exactly_once=False)                 # at most once per tick
    def call_partner(tick):
        partner.post(...)                                              # not in the database

    loop.run()                                                         # until loop.stop()

The guarantee per tick: a job with `exactly_once=True` runs in the transaction that claims the tick
(fenced by the term's token, ended by the server's timeouts past the term), so its effect commits together with the
claim, once, or not at all; with `exactly_once=False` the claim commits first and the job runs after,
so it runs at most once, and a tick whose job did not finish (it failed, or the pod died while it
ran) stays in `lease_unfinished_ticks`, reported at each new term, never rerun.

On taking over, a leader runs what its predecessor missed, computed from the ledger (the latest tick
claimed per job) with the job's `misfire_grace_s` and `coalesce` (see `ticks.plan_catch_up`). The
loop heartbeats the sidecar from its own thread, between jobs, with `schedule_count` and
`next_due_task`: a loop stuck in a job stops heartbeating, so with the sidecar's heartbeat TTL set
longer than the longest job a stuck scheduler hands leadership on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from . import psycopg as lease_pg
from ._blocking import Sidecar
from ._leading import Leading
from ._term import StaleToken, Term, TermEnded
from .ticks import Cron, Interval, Schedule, plan_catch_up

__all__ = ["Job", "LeaderLoop", "Tick"]

log = logging.getLogger("lease_sidecar_client.loop")
RECONNECT_S = 1.0


@dataclass
class Job:
    name: str
    schedule: Schedule
    func: Callable[[Tick], Any]
    exactly_once: bool = True
    misfire_grace_s: float | None = None
    coalesce: bool = True


@dataclass(frozen=True)
class Tick:
    """What a job is given: its scheduled time, the term it runs in, and (exactly once) the
    connection whose open transaction holds the claim: write the effect there."""

    job: str
    scheduled_at: datetime
    term: Term
    scope: str
    conn: psycopg.Connection[Any] | None
    lead: Leading
    late_s: float


@dataclass
class Counts:
    ran: int = 0
    claimed_elsewhere: int = 0
    failed: int = 0
    refused: int = 0
    too_late: int = 0
    coalesced: int = 0
    terms: int = 0
    unfinished_reported: list[tuple[Any, ...]] = field(default_factory=list)


class LeaderLoop:
    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], sidecar: Sidecar | None = None,
                 scope: str | None = None, heartbeat_interval_s: float = 1.0, refresh_s: float = 1.0,
                 install: bool = True, now: Callable[[], datetime] | None = None) -> None:
        self.connect = connect
        self.sidecar = sidecar or Sidecar()
        self.scope = scope
        self.heartbeat_interval_s = heartbeat_interval_s
        self.refresh_s = refresh_s
        self.install = install
        self.now = now or (lambda: datetime.now(UTC))
        self.jobs: dict[str, Job] = {}
        self.counts = Counts()
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._installed = False
        self._last_beat = float("-inf")
        self._next_due: tuple[str, datetime] | None = None

    # ------------------------------------------------------------ jobs

    def add_job(self, name: str, func: Callable[[Tick], Any], *, every_s: float | None = None,
                anchor: datetime | None = None, cron: str | None = None, tz: str = "UTC",
                schedule: Schedule | None = None, exactly_once: bool = True,
                misfire_grace_s: float | None = None, coalesce: bool = True) -> Job:
        """One of: `every_s` with a fixed `anchor` (never this process's start: leaders' ticks
        must match), `cron` (5 fields, in `tz`), or a `schedule`."""
        if sum(x is not None for x in (every_s, cron, schedule)) != 1:
            raise ValueError(f"job {name}: give exactly one of every_s (with anchor), cron, schedule")
        if every_s is not None:
            if anchor is None:
                raise ValueError(f"job {name}: anchor: required with every_s (a fixed start shared by all leaders)")
            schedule = Interval(every_s, anchor)
        elif cron is not None:
            schedule = Cron(cron, tz)
        assert schedule is not None
        if name in self.jobs:
            raise ValueError(f"job {name}: defined twice")
        self.jobs[name] = Job(name, schedule, func, exactly_once, misfire_grace_s, coalesce)
        return self.jobs[name]

    def job(self, name: str | None = None, **options: Any) -> Callable[[Callable[[Tick], Any]], Callable[[Tick], Any]]:
        def register(func: Callable[[Tick], Any]) -> Callable[[Tick], Any]:
            self.add_job(name or func.__name__, func, **options)
            return func

        return register

    # ------------------------------------------------------------ running

    def stop(self) -> None:
        """Ends `run()` after the job in progress (call from a signal handler or another thread)."""
        self._stop.set()

    def run(self) -> None:
        """Until `stop()`: waits for a term (heartbeating), leads, waits again. On stop while
        leading, resigns so that another pod takes over at once."""
        while not self._stop.is_set():
            self._beat(force=True)
            lead = Leading(self.sidecar, wait_timeout_s=self.heartbeat_interval_s, refresh_s=self.refresh_s)
            try:
                lead.__enter__()
            except TimeoutError:
                continue
            try:
                self.counts.terms += 1
                self._lead(lead)
            except TermEnded as ended:
                log.info("term ended: %s", ended)
            except psycopg.Error as error:
                log.warning("database: %s; reconnecting", error)
                self._drop_connection()
                self._stop.wait(RECONNECT_S)
            finally:
                lead.resign_on_exit = self._stop.is_set()
                lead.__exit__(None, None, None)
        self._drop_connection()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = self.connect()
            conn.autocommit = True  # each transaction is an explicit conn.transaction()
            if self.install and not self._installed:
                lease_pg.install(conn)
                self._installed = True
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _lead(self, lead: Leading) -> None:
        term = lead.check()
        conn = self._connection()
        scope = self.scope or term.lease
        now = self.now()
        # Where each job goes on: its latest tick in the ledger (any term's), or, for a job never
        # claimed, the start of its misfire grace (a new job does not replay its past).
        last: dict[str, datetime] = {}
        for job in self.jobs.values():
            claimed = lease_pg.last_tick(conn, scope, job.name)
            if claimed is None:
                grace = timedelta(seconds=job.misfire_grace_s or 0)
                claimed = now - grace - timedelta(microseconds=1)
            last[job.name] = claimed
        unfinished = lease_pg.unfinished_ticks(conn, scope)
        if unfinished:
            self.counts.unfinished_reported = list(unfinished)
            log.warning("%d tick(s) claimed but never finished (not rerun): %s", len(unfinished),
                        ", ".join(f"{row[1]}@{row[2].isoformat()} (token {row[3]})" for row in unfinished[:10]))
        while not self._stop.is_set():
            lead.check()
            now = self.now()
            for job in self.jobs.values():
                plan = plan_catch_up(job.schedule, last[job.name], now, job.misfire_grace_s, job.coalesce)
                self.counts.too_late += len(plan.too_late)
                self.counts.coalesced += len(plan.coalesced)
                if plan.too_late or plan.coalesced:
                    log.info("job %s: %d tick(s) past the misfire grace and %d coalesced, not run", job.name,
                             len(plan.too_late), len(plan.coalesced))
                for tick in plan.run:
                    self._run_tick(lead, conn, scope, job, tick)
                    last[job.name] = tick
                    self._next_due = self._earliest_next(last)
                    self._beat()
                dropped = plan.too_late + plan.coalesced
                if dropped and max(dropped) > last[job.name]:
                    last[job.name] = max(dropped)
            self._next_due = self._earliest_next(last)
            self._beat()
            wait_s = self.heartbeat_interval_s
            if self._next_due is not None:
                wait_s = min(wait_s, max(0.0, (self._next_due[1] - self.now()).total_seconds()))
            if lead.sleep(wait_s):
                lead.check()

    def _earliest_next(self, last: dict[str, datetime]) -> tuple[str, datetime] | None:
        upcoming = [(tick, name) for name, job in self.jobs.items()
                    if (tick := job.schedule.next_after(last[name])) is not None]
        if not upcoming:
            return None
        tick, name = min(upcoming)
        return name, tick

    def _run_tick(self, lead: Leading, conn: psycopg.Connection[Any], scope: str, job: Job,
                  scheduled_at: datetime) -> None:
        term = lead.check()
        late_s = max(0.0, (self.now() - scheduled_at).total_seconds())
        try:
            if job.exactly_once:
                with lease_pg.fenced_transaction(conn, term, scope=scope):
                    if not lease_pg.claim_tick(conn, term, job.name, scheduled_at, scope=scope):
                        self.counts.claimed_elsewhere += 1
                        return
                    job.func(Tick(job.name, scheduled_at, term, scope, conn, lead, late_s))
                    lease_pg.finish_tick(conn, term, job.name, scheduled_at, scope=scope)
                self.counts.ran += 1
                return
            with lease_pg.fenced_transaction(conn, term, scope=scope):
                claimed = lease_pg.claim_tick(conn, term, job.name, scheduled_at, scope=scope)
            if not claimed:
                self.counts.claimed_elsewhere += 1
                return
            job.func(Tick(job.name, scheduled_at, term, scope, None, lead, late_s))
            with conn.transaction():
                lease_pg.finish_tick(conn, term, job.name, scheduled_at, scope=scope)
            self.counts.ran += 1
        except StaleToken:
            self.counts.refused += 1
            raise
        except TermEnded:
            raise
        except psycopg.Error:
            if conn.closed or conn.broken:  # the session is gone (idle-killed, server restart): reconnect
                raise
            # The job's own SQL failed: its transaction rolled back (exactly once: the tick is not
            # claimed, a later term may run it; at most once: it stays unfinished), the loop goes on.
            self.counts.failed += 1
            log.exception("job %s at %s failed", job.name, scheduled_at.isoformat())
        except Exception:
            self.counts.failed += 1
            log.exception("job %s at %s failed", job.name, scheduled_at.isoformat())

    def _beat(self, force: bool = False) -> None:
        now_mono = time.monotonic()
        if not force and now_mono - self._last_beat < self.heartbeat_interval_s:
            return
        self._last_beat = now_mono
        next_due = None if self._next_due is None else f"{self._next_due[0]}@{self._next_due[1].isoformat()}"
        self.sidecar.heartbeat(schedule_count=len(self.jobs), next_due_task=next_due)
