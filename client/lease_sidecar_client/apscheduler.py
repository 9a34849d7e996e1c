"""APScheduler 3.x led by the sidecar (extra `apscheduler`, plus `psycopg` for the ledger).

Every replica runs the same scheduler with the same jobs; the executor lets a run through only
while this pod leads, claims each run's scheduled time in the PostgreSQL tick ledger with the
term's fencing token, and runs the job inside the claim's transaction:

    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger
    from lease_sidecar_client import current_term
    from lease_sidecar_client.apscheduler import LeaderExecutor, current_tick, lead

    scheduler = BackgroundScheduler(executors={"default": LeaderExecutor(dsn="postgresql://...")},
                                    job_defaults={"misfire_grace_time": 60})

    @scheduler.scheduled_job(IntervalTrigger(seconds=10, start_date="2026-01-01T00:00:00Z"), id="report")
    def report():
        tick = current_tick()                     # job id, scheduled time, term, claim's connection
        tick.connection.execute("insert into reports ...")   # commits with the claim: exactly once

    lead(scheduler)     # heartbeats from the scheduler's loop, catch-up in each new term, resign on shutdown
    scheduler.start()

What it guarantees, per job and scheduled time (tick), across replicas and failovers:

- *exactly once* for what the job writes through `current_tick().connection` (`claim="with_effect"`,
  the default): the claim, the effect and `lease_finish_tick` commit in one fenced transaction, or
  none of them (a job that raises rolls its claim back and, as in APScheduler, is not rerun). The
  server ends the transaction if it sits idle past the term (`idle_in_transaction_session_timeout`),
  and on PostgreSQL 17 or newer if it lasts past the term at all (`transaction_timeout`), so a
  paused leader cannot commit after its successor began; a job must therefore finish within its
  term, unless `LeaderExecutor(idle_timeout_s=...)` allows longer. On PostgreSQL 16 or older a job
  kept busy (never idle that long) is not ended by the server: see docs/exactly-once.md.
- *at most once* for anything else (`claim="before"`: the claim commits before the job runs;
  a tick whose job did not finish stays in `lease_unfinished_ticks`, reported, never rerun).

Ticks must come from a shared anchor: `CronTrigger`, `DateTrigger`, or `IntervalTrigger` with a
fixed `start_date` (the same in every replica). An `IntervalTrigger` without one counts from each
process's start, so two leaders' ticks never match in the ledger: the executor refuses to run it
(error logged once). `jitter` is refused for the same reason.

Catch-up: the first run of a job in a new term (or the heartbeat, for a job not due soon) first
runs the ticks its predecessor missed, from the ledger (`lease_sidecar_client.ticks.plan_catch_up`):
those after the latest claimed tick, not more than the job's `misfire_grace_time` late (None: no
limit), only the latest of them if the job coalesces.

Sync jobs only (run in the executor's threads, also under AsyncIOScheduler); coroutine jobs and
the process pool are refused.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from apscheduler.events import (
    EVENT_JOB_ADDED,
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    EVENT_JOB_MODIFIED,
    EVENT_SCHEDULER_SHUTDOWN,
    JobExecutionEvent,
    SchedulerEvent,
)
from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.job import Job
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import iscoroutinefunction_partial

from . import psycopg as lease_pg
from ._blocking import DEFAULT_URL, Sidecar
from ._term import StaleToken, Term, TermEnded, bind_term
from .ticks import plan_catch_up

__all__ = ["HEARTBEAT_JOB_ID", "LeaderExecutor", "Tick", "UnanchoredSchedule", "current_tick", "lead"]

HEARTBEAT_JOB_ID = "lease-sidecar-heartbeat"
HEARTBEAT_EXECUTOR = "lease-sidecar-scheduler-loop"
CLAIM_MODES = ("with_effect", "before")
_UNANCHORED_SLACK_S = 1.0
"""An IntervalTrigger whose start_date lies within this of `added + interval` was given none."""

logger = logging.getLogger("lease_sidecar_client.apscheduler")


class UnanchoredSchedule(ValueError):
    """The job's ticks depend on this process (no fixed start date, or jitter): leaders' ticks would
    never match in the ledger."""


@dataclass(frozen=True)
class Tick:
    """The run in progress: which job, which scheduled time, in which term, and (with
    `claim="with_effect"`) the connection whose open transaction holds the claim."""

    job_id: str
    scheduled_at: datetime
    term: Term
    scope: str
    connection: psycopg.Connection[Any] | None


_current_tick: contextvars.ContextVar[Tick | None] = contextvars.ContextVar("lease_sidecar_apscheduler_tick",
                                                                            default=None)


def current_tick() -> Tick | None:
    """The tick the running job executes (None outside a LeaderExecutor's run)."""
    return _current_tick.get()


# ---------------------------------------------------------------- ticks of APScheduler triggers


class TriggerSchedule:
    """An APScheduler trigger as a `lease_sidecar_client.ticks.Schedule`: the same ticks in every
    replica. Refuses what each replica would compute differently (jitter, other trigger types)."""

    def __init__(self, trigger: Any) -> None:
        if getattr(trigger, "jitter", None):
            raise UnanchoredSchedule("jitter: each replica would draw other ticks; leave it unset")
        if not isinstance(trigger, IntervalTrigger | CronTrigger | DateTrigger):
            raise UnanchoredSchedule(f"{type(trigger).__name__}: only CronTrigger, IntervalTrigger with a "
                                     "start_date and DateTrigger have ticks every replica agrees on")
        self.trigger = trigger

    def normalize(self, moment: datetime) -> datetime:
        """The tick as the ledger stores it (cron ticks are whole seconds)."""
        moment = moment.astimezone(UTC)
        return moment.replace(microsecond=0) if isinstance(self.trigger, CronTrigger) else moment

    def next_after(self, moment: datetime) -> datetime | None:
        probe = moment
        for _ in range(3):  # a normalised fire time may land on `moment` itself: look once more
            probe += timedelta(microseconds=1)
            fire = self.trigger.get_next_fire_time(None, probe)
            if fire is None:
                return None
            tick = self.normalize(fire)
            if tick > moment:
                return tick
            probe = tick
        return None


class IntervalSchedule(TriggerSchedule):
    """An IntervalTrigger's ticks, `start_date + k * interval` counted in whole microseconds
    (APScheduler adds float seconds, which may differ in the last digit between two ways of
    reaching the same tick)."""

    def __init__(self, trigger: IntervalTrigger) -> None:
        super().__init__(trigger)
        self._start = trigger.start_date.astimezone(UTC)
        self._every = timedelta(microseconds=round(trigger.interval.total_seconds() * 1_000_000))

    def normalize(self, moment: datetime) -> datetime:
        k = round((moment.astimezone(UTC) - self._start) / self._every)
        return self._start + k * self._every

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """Lets a catch-up skip a long outage arithmetically."""
        if moment < self._start:
            return None
        return self._start + math.floor((moment - self._start) / self._every) * self._every


def _schedule_of(job: Job) -> TriggerSchedule:
    if isinstance(job.trigger, IntervalTrigger):
        return IntervalSchedule(job.trigger)
    return TriggerSchedule(job.trigger)


# ---------------------------------------------------------------- the executor


class LeaderExecutor(BasePoolExecutor):
    """A thread-pool executor that runs a job only while this pod leads, once per tick across all
    replicas (see the module's docstring).

    `dsn` (or `connect`, a callable returning a psycopg Connection) reaches the PostgreSQL holding
    the ledger; `sidecar` is a `Sidecar` or its URL; `scope` defaults to the term's lease
    ("namespace/name"). `claim`: "with_effect" (default) or "before". `install_sql`: create the
    fence and ledger at start (idempotent). `idle_timeout_s`: how long the claim's transaction may
    sit idle (the job's time between statements), and on PostgreSQL 17 or newer last at all; None
    (default) is below the term's remaining time at the claim, so a job must finish within its term
    (with a 4 s lease, 1 to 2 s). A longer
    fixed value lets longer jobs commit: a paused leader's transaction then stays open up to that
    long, and the next leader's first fence waits for it (its effect still commits before any of
    the next term's), so it may land after its term ended."""

    def __init__(self, dsn: str | None = None, *, connect: Callable[[], psycopg.Connection[Any]] | None = None,
                 sidecar: Sidecar | str = DEFAULT_URL, scope: str | None = None, claim: str = "with_effect",
                 max_workers: int = 10, install_sql: bool = True, pool_kwargs: dict[str, Any] | None = None,
                 idle_timeout_s: float | None = None) -> None:
        if (dsn is None) == (connect is None):
            raise ValueError("dsn or connect: give exactly one (how to reach the ledger's PostgreSQL)")
        if claim not in CLAIM_MODES:
            raise ValueError(f"claim: must be one of {', '.join(CLAIM_MODES)}, not {claim!r}")
        super().__init__(concurrent.futures.ThreadPoolExecutor(int(max_workers), **(pool_kwargs or {})))
        self._connect = connect or (lambda: psycopg.connect(dsn, autocommit=True))  # type: ignore[arg-type]
        self.sidecar = sidecar if isinstance(sidecar, Sidecar) else Sidecar(sidecar, request_timeout_s=1.0)
        self.scope = scope
        self.claim = claim
        self.install_sql = install_sql
        if idle_timeout_s is not None and not (idle_timeout_s > 0 and math.isfinite(idle_timeout_s)):
            raise ValueError(f"idle_timeout_s: must be a finite number > 0 or None, not {idle_timeout_s!r}")
        self.idle_timeout_s = idle_timeout_s
        self._local = threading.local()
        self._caught_up: dict[str, tuple[str, int]] = {}  # job id -> (scope, token) its catch-up ran in
        self._catch_up_lock = threading.Lock()
        self._refused: set[str] = set()
        self._draining = threading.Event()
        self.unanchored: set[str] = set()
        """Ids of IntervalTrigger jobs seen added without a start_date (by `lead`'s listener)."""

    # -- APScheduler's extension points

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        if self.install_sql:
            with self._connection() as conn:
                lease_pg.install(conn)

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        if iscoroutinefunction_partial(job.func):
            raise TypeError(f"job {job.id}: coroutine jobs are not supported by LeaderExecutor (use a sync function)")

        def done(future: concurrent.futures.Future[list[Any]]) -> None:
            error = future.exception()
            if error is not None:
                self._run_job_error(job.id, error, error.__traceback__)
            else:
                self._run_job_success(job.id, future.result())

        future = self._pool.submit(contextvars.copy_context().run, self._run, job, job._jobstore_alias,
                                   list(run_times), self._logger.name)
        future.add_done_callback(done)

    # -- one submission, in a pool thread

    def _run(self, job: Job, jobstore_alias: str, run_times: list[datetime], logger_name: str) -> list[Any]:
        log = logging.getLogger(logger_name)
        if self._draining.is_set():
            log.debug('Job "%s" not run: draining for a hand-over', job)
            return []
        term = self.sidecar.term()
        if term is None or not term.is_valid():
            log.debug('Job "%s" not run: this pod does not lead', job)
            return []
        try:
            schedule = _schedule_of(job)
            if job.id in self.unanchored:
                raise UnanchoredSchedule("IntervalTrigger without start_date: its ticks count from this process's"
                                         " start; give a fixed start_date (the same in every replica)")
        except UnanchoredSchedule as refusal:
            if job.id not in self._refused:
                self._refused.add(job.id)
                log.error('Job "%s" refused by LeaderExecutor: %s', job, refusal)
            return []
        scope = self.scope or term.lease
        ticks = sorted({schedule.normalize(moment) for moment in run_times})
        with self._catch_up_lock:  # one submission per job and term catches up (the others need not)
            catch_up = self._caught_up.get(job.id) != (scope, term.fencing_token)
            self._caught_up[job.id] = (scope, term.fencing_token)
        if catch_up:
            missed = self._missed(job, schedule, scope, min(ticks) if ticks else datetime.now(UTC), log)
            if missed and ticks and job.coalesce:
                log.info('Job "%s": %d missed tick(s) coalesced into %s', job, len(missed), ticks[-1])
                ticks = ticks[-1:]
            else:
                ticks = sorted(set(missed) | set(ticks))
        events = []
        for scheduled_at in ticks:
            event = self._run_tick(job, jobstore_alias, scheduled_at, scope, log)
            if event is not None:
                events.append(event)
        return events

    def _missed(self, job: Job, schedule: Any, scope: str, before: datetime, log: logging.Logger) -> list[datetime]:
        """The ticks before `before` that this term catches up (see the module's docstring)."""
        try:
            with self._connection() as conn:
                last = lease_pg.last_tick(conn, scope, job.id)
        except psycopg.Error as error:
            log.warning('Job "%s": catch-up skipped, ledger unreachable: %s', job, error)
            return []
        if last is None:
            return []  # never ran anywhere: a new job does not replay its past
        plan = plan_catch_up(schedule, last, before - timedelta(microseconds=1),
                             misfire_grace_s=job.misfire_grace_time, coalesce=job.coalesce)
        if plan.too_late:
            log.warning('Job "%s": ticks after %s up to %s missed by more than the misfire grace (%ss): not run',
                        job, last, plan.too_late[-1], job.misfire_grace_time)
        if plan.run:
            log.info('Job "%s": catching up %d tick(s) missed since %s', job, len(plan.run), last)
        return plan.run

    def _run_tick(self, job: Job, jobstore_alias: str, scheduled_at: datetime, scope: str,
                  log: logging.Logger) -> JobExecutionEvent | None:
        if job.misfire_grace_time is not None:
            late = datetime.now(UTC) - scheduled_at
            if late > timedelta(seconds=job.misfire_grace_time):
                log.warning('Run time of job "%s" was missed by %s', job, late)
                return JobExecutionEvent(EVENT_JOB_MISSED, job.id, jobstore_alias, scheduled_at)
        term = self.sidecar.term()  # asked again: the term may have ended while earlier ticks ran
        if term is None or not term.is_valid() or (self.scope is None and term.lease != scope):
            log.info('Job "%s" (scheduled at %s) not run: the term ended', job, scheduled_at)
            return None
        try:
            with self._connection() as conn:
                if self.claim == "before":
                    with lease_pg.fenced_transaction(conn, term, scope=scope):
                        claimed = lease_pg.claim_tick(conn, term, job.id, scheduled_at, scope=scope)
                    if not claimed:
                        log.debug('Job "%s" (scheduled at %s) already claimed', job, scheduled_at)
                        return None
                    with self._in_tick(job, scheduled_at, term, scope, None):
                        retval = self._call(job, scheduled_at, log)
                    lease_pg.finish_tick(conn, term, job.id, scheduled_at, scope=scope)
                else:
                    with lease_pg.fenced_transaction(conn, term, scope=scope, idle_timeout_s=self.idle_timeout_s):
                        if not lease_pg.claim_tick(conn, term, job.id, scheduled_at, scope=scope):
                            log.debug('Job "%s" (scheduled at %s) already claimed', job, scheduled_at)
                            return None
                        with self._in_tick(job, scheduled_at, term, scope, conn):
                            retval = self._call(job, scheduled_at, log)
                        lease_pg.finish_tick(conn, term, job.id, scheduled_at, scope=scope)
        except (StaleToken, TermEnded) as ended:
            log.warning('Job "%s" (scheduled at %s) refused: %s', job, scheduled_at, ended)
            return None
        except _JobFailed as failed:
            return JobExecutionEvent(EVENT_JOB_ERROR, job.id, jobstore_alias, scheduled_at,
                                     exception=failed.error, traceback=failed.formatted)
        except psycopg.Error as error:
            log.error('Job "%s" (scheduled at %s) not run or not committed: %s', job, scheduled_at, error)
            return JobExecutionEvent(EVENT_JOB_ERROR, job.id, jobstore_alias, scheduled_at, exception=error,
                                     traceback="".join(traceback.format_tb(error.__traceback__)))
        log.info('Job "%s" executed successfully', job)
        return JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, jobstore_alias, scheduled_at, retval=retval)

    @staticmethod
    def _call(job: Job, scheduled_at: datetime, log: logging.Logger) -> Any:
        log.info('Running job "%s" (scheduled at %s)', job, scheduled_at)
        try:
            return job.func(*job.args, **job.kwargs)
        except BaseException as error:
            formatted = "".join(traceback.format_tb(sys.exc_info()[2]))
            log.exception('Job "%s" raised an exception', job)
            raise _JobFailed(error, formatted) from error

    @contextmanager
    def _in_tick(self, job: Job, scheduled_at: datetime, term: Term, scope: str,
                 conn: psycopg.Connection[Any] | None) -> Iterator[None]:
        reset = _current_tick.set(Tick(job.id, scheduled_at, term, scope, conn))
        try:
            with bind_term(term):
                yield
        finally:
            _current_tick.reset(reset)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """This thread's connection (autocommit: each `transaction()` is BEGIN ... COMMIT); a broken
        one is dropped and opened again next time."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self._connect()
        try:
            yield conn
        except psycopg.OperationalError:
            conn.close()
            self._local.conn = None
            raise

    # -- used by lead()

    def running(self) -> int:
        with self._lock:
            return sum(self._instances.values())

    def catch_up(self, job: Job) -> None:
        """Submits a run with no current tick: only the catch-up of the term (if any)."""
        from apscheduler.executors.base import MaxInstancesReachedError

        try:
            self.submit_job(job, [])
        except MaxInstancesReachedError:
            pass  # its running instance's next tick catches up

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


class _JobFailed(Exception):
    def __init__(self, error: BaseException, formatted: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.formatted = formatted


# ---------------------------------------------------------------- heartbeats from the scheduler's loop


class _SchedulerLoopExecutor(BaseExecutor):
    """Runs its (tiny) jobs in the scheduler's own loop, not in a pool: a scheduler stuck in its loop
    stops heartbeating, and the sidecar hands leadership on."""

    def submit_job(self, job: Job, run_times: list[datetime]) -> None:
        try:
            job.func(*job.args, **job.kwargs)
        except Exception:
            self._logger.exception("lease-sidecar heartbeat failed")

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        raise AssertionError("unreachable: submit_job runs inline")


class _Leadership:
    def __init__(self, scheduler: Any, sidecar: Sidecar, resign_on_shutdown: bool) -> None:
        self.scheduler = scheduler
        self.sidecar = sidecar
        self.resign_on_shutdown = resign_on_shutdown
        self.term: Term | None = None
        self.added_at: dict[str, float] = {}

    def executors(self) -> list[tuple[str, LeaderExecutor]]:
        return [(alias, executor) for alias, executor in self.scheduler._executors.items()
                if isinstance(executor, LeaderExecutor)]

    def jobs(self) -> list[Job]:
        return [job for job in self.scheduler.get_jobs() if job.id != HEARTBEAT_JOB_ID]

    def beat(self) -> None:
        jobs = self.jobs()
        pending = [job for job in jobs if job.next_run_time is not None]
        next_due = min(pending, key=lambda job: job.next_run_time).id if pending else None
        asked_at = time.monotonic()
        status = self.sidecar.heartbeat(schedule_count=len(jobs), next_due_task=next_due)
        term = Term.from_status(status, asked_at_monotonic=asked_at)
        executors = self.executors()
        if status is not None and status.get("draining") is True:
            for _alias, executor in executors:
                executor._draining.set()
            if all(executor.running() == 0 for _alias, executor in executors):
                logger.info("hand-over requested: no job running, resigning")
                self.sidecar.resign(0)
            return
        for _alias, executor in executors:
            executor._draining.clear()
        if term is not None and term.is_valid() and not term.same_term(self.term):
            logger.info("leading %s with token %d: catching up missed ticks", term.lease, term.fencing_token)
            by_alias = dict(executors)
            for job in jobs:
                executor = by_alias.get(job.executor)
                if executor is not None:
                    executor.catch_up(job)
        self.term = term

    def on_event(self, event: SchedulerEvent) -> None:
        if event.code == EVENT_SCHEDULER_SHUTDOWN:
            if self.resign_on_shutdown and self.term is not None and self.term.is_valid():
                self.sidecar.resign(0)
            return
        job_id = getattr(event, "job_id", None)
        if job_id is None or job_id == HEARTBEAT_JOB_ID:
            return
        job = self.scheduler.get_job(job_id)
        if job is None:
            return
        if isinstance(job.trigger, IntervalTrigger):
            expected = datetime.now(job.trigger.timezone) + job.trigger.interval
            unanchored = abs((job.trigger.start_date - expected).total_seconds()) < _UNANCHORED_SLACK_S
            for _alias, executor in self.executors():
                if job.executor == _alias:
                    if unanchored:
                        executor.unanchored.add(job.id)
                        logger.error('Job "%s": IntervalTrigger without start_date is refused (its ticks count from'
                                     " this process's start); give a fixed start_date", job)
                    else:
                        executor.unanchored.discard(job.id)


def lead(scheduler: Any, sidecar: Sidecar | str | None = None, heartbeat_interval_s: float = 1.0,
         resign_on_shutdown: bool = True) -> None:
    """Wires a scheduler to its sidecar, before `scheduler.start()`: a heartbeat (schedule_count,
    next_due_task) every `heartbeat_interval_s` from the scheduler's own loop; at each new term,
    catch-up of every LeaderExecutor job; on a hand-over's drain, no new runs, then a resign once
    the running ones end; a resign at shutdown; IntervalTriggers without start_date refused."""
    if not (heartbeat_interval_s > 0 and math.isfinite(heartbeat_interval_s)):
        raise ValueError(f"heartbeat_interval_s: must be a finite number > 0, not {heartbeat_interval_s!r}")
    if sidecar is None:
        leaders = [executor for executor in scheduler._executors.values() if isinstance(executor, LeaderExecutor)]
        sidecar = leaders[0].sidecar if leaders else Sidecar(request_timeout_s=1.0)
    elif isinstance(sidecar, str):
        sidecar = Sidecar(sidecar, request_timeout_s=1.0)
    leadership = _Leadership(scheduler, sidecar, resign_on_shutdown)
    scheduler.add_listener(leadership.on_event, EVENT_JOB_ADDED | EVENT_JOB_MODIFIED | EVENT_SCHEDULER_SHUTDOWN)
    scheduler.add_executor(_SchedulerLoopExecutor(), HEARTBEAT_EXECUTOR)
    scheduler.add_job(leadership.beat, IntervalTrigger(seconds=heartbeat_interval_s), id=HEARTBEAT_JOB_ID,
                      name="lease-sidecar heartbeat", executor=HEARTBEAT_EXECUTOR, coalesce=True,
                      misfire_grace_time=None, max_instances=1, replace_existing=True)
