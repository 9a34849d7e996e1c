"""The example beat: several jobs ticking every second, each run writing one row into PostgreSQL.

    python -m beat_app apscheduler      # APScheduler 3 in every replica; BEAT_MODE picks how it writes
    python -m beat_app celery-beat      # Celery beat led by the sidecar (the Celery variant)
    python -m beat_app celery-worker    # its worker

Modes (BEAT_MODE):
  fenced  every run is claimed in the tick ledger with the term's fencing token, and its effect is
          written in the claim's transaction (lease_sidecar_client.psycopg): a tick runs at most
          once, exactly once when it commits, and a paused leader's late write is refused. A new
          leader runs the ticks its predecessor missed (from the ledger, within the misfire grace).
  naive   what a user without a ledger or fence writes: check is_leader() before each run, then
          write. Kept for comparison (tests/node/test_beat_chaos.py counts its duplicates).

Ticks are computed from a shared anchor (BEAT_ANCHOR), never from a process's start, so every
replica's tick of a job names the same scheduled time. Each run does BEAT_WORK_SECONDS of "work"
between its check of the term and its write: that is where a real job's pause (a GC, a slow call,
SIGSTOP) lets a term end under it.

Every execution is a row of `beat_effects` (schema.sql: no uniqueness, so a tick run twice is two
rows); every refused write a row of `beat_refusals`. Configuration is read from the environment;
a wrong value is one line naming the variable and the rule, exit code 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).with_name("schema.sql")
SCHEMA_LOCK_KEY = 0x6265617473  # pg_advisory_lock key: replicas install the schema one at a time
JOB_PREFIX = "job-"
CATCH_UP_WORKERS = 8
# The ticks of one job from first to last with no claim in the ledger, after its first claim ever.
UNCLAIMED_TICKS = """
SELECT tick FROM generate_series(%(first)s::timestamptz, %(last)s::timestamptz, %(step)s) AS tick
 WHERE tick > (SELECT min(scheduled_at) FROM lease_tick_ledger WHERE scope = %(scope)s AND job = %(job)s)
   AND NOT EXISTS (SELECT 1 FROM lease_tick_ledger l
                    WHERE l.scope = %(scope)s AND l.job = %(job)s AND l.scheduled_at = tick)
"""
TERM_REFRESH_S = 0.25
log = logging.getLogger("beat")
INSERT_EFFECT = ("INSERT INTO beat_effects (job, scheduled_at, token, pod, mode, caught_up) "
                 "VALUES (%s, %s, %s, %s, %s, %s)")
INSERT_REFUSAL = "INSERT INTO beat_refusals (job, scheduled_at, token, pod, reason) VALUES (%s, %s, %s, %s, %s)"


_output = threading.Lock()


def say(line: str) -> None:
    """One line to stdout, whole: runs print from many threads at once."""
    with _output:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    mode: str
    jobs: tuple[str, ...]
    interval_s: float
    work_s: float
    misfire_grace_s: float
    anchor: datetime
    heartbeat_s: float
    pod: str
    sidecar_url: str
    redis_url: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)

        def number(name: str, default: str, minimum: float, integer: bool = False) -> float:
            raw = env.get(name, default)
            try:
                value = int(raw) if integer else float(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r}: must be a{'n integer' if integer else ' number'}") from None
            if value < minimum:
                raise ConfigError(f"{name}={raw!r}: must be at least {minimum:g}")
            return value

        mode = env.get("BEAT_MODE", "fenced")
        if mode not in ("fenced", "naive"):
            raise ConfigError(f"BEAT_MODE={mode!r}: must be fenced or naive")
        anchor_raw = env.get("BEAT_ANCHOR", "2026-01-01T00:00:00+00:00")
        try:
            anchor = datetime.fromisoformat(anchor_raw)
        except ValueError:
            raise ConfigError(f"BEAT_ANCHOR={anchor_raw!r}: must be an ISO 8601 time with its offset") from None
        if anchor.tzinfo is None:
            raise ConfigError(f"BEAT_ANCHOR={anchor_raw!r}: must carry a UTC offset (ticks are shared)")
        count = int(number("BEAT_JOBS", "4", 1, integer=True))
        interval_s = number("BEAT_INTERVAL_SECONDS", "1", 0.1)
        return cls(
            mode=mode,
            jobs=tuple(f"{JOB_PREFIX}{index}" for index in range(1, count + 1)),
            interval_s=interval_s,
            work_s=number("BEAT_WORK_SECONDS", "0.3", 0.0),
            misfire_grace_s=number("BEAT_MISFIRE_GRACE_SECONDS", "120", 0.0),
            anchor=anchor.astimezone(UTC),
            heartbeat_s=number("BEAT_HEARTBEAT_SECONDS", "1", 0.1),
            pod=env.get("POD_NAME") or os.uname().nodename,
            sidecar_url=env.get("LEASE_SIDECAR_URL", "http://127.0.0.1:4040"),
            redis_url=env.get("REDIS_URL", ""),
        )

    def tick_at_or_before(self, moment: datetime) -> datetime:
        """The latest tick of the shared schedule at or before `moment`."""
        elapsed_s = (moment - self.anchor).total_seconds()
        return self.anchor + timedelta(seconds=(elapsed_s // self.interval_s) * self.interval_s)


# ---------------------------------------------------------------- PostgreSQL


def connect() -> Any:
    """A connection from the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE)."""
    import psycopg

    return psycopg.connect(autocommit=True, connect_timeout=5, application_name=os.environ.get("POD_NAME", "beat"))


def wait_for_database(timeout_s: float = 300.0) -> Any:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return connect()
        except psycopg.OperationalError as error:
            if time.monotonic() > deadline:
                raise
            log.info("PostgreSQL not reachable yet (%s); retrying", str(error).strip().splitlines()[0])
            time.sleep(2)


def install_schema(conn: Any) -> None:
    """The fence and ledger (lease_fence.sql) and the effect tables, one replica at a time."""
    from lease_sidecar_client import psycopg as fence_pg

    conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
    try:
        fence_pg.install(conn)
        conn.execute(SCHEMA.read_text())
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


class Connections:
    """One connection per worker thread, replaced after it fails (a server that ended the session)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = connect()
        return conn

    def drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken; nothing to keep
                pass


# ---------------------------------------------------------------- the runs


class Beat:
    def __init__(self, settings: Settings) -> None:
        from lease_sidecar_client import Sidecar

        self.settings = settings
        self.sidecar = Sidecar(settings.sidecar_url)
        self.connections = Connections()
        self.runs = 0
        # Catch up when a term starts, and again whenever a run of this process was skipped or
        # failed since (a sidecar restarted under the same term, a database hiccup).
        self._caught_up_token: int | None = None
        self._runs_lost = True
        self._refused_token: int | None = None  # a term whose write was refused: it is over
        self._catch_up_lock = threading.Lock()
        self._term_lock = threading.Lock()
        self._term: Any = None
        self._term_asked_at = -TERM_REFRESH_S
        self._catch_up_pool = ThreadPoolExecutor(max_workers=CATCH_UP_WORKERS, thread_name_prefix="catch-up")

    # Every run of every job lands here with its scheduled time (TickExecutor below).
    def run(self, job: str, scheduled_at: datetime) -> None:
        if self.settings.mode == "naive":
            self.run_naive(job, scheduled_at)
        else:
            self.run_fenced(job, scheduled_at)

    def run_naive(self, job: str, scheduled_at: datetime) -> None:
        """Check, work, write: nothing guards the window between the check and the write."""
        status = self.sidecar.status()  # None while the sidecar cannot be asked: not leading
        if not status or status.get("is_leader") is not True:
            return
        time.sleep(self.settings.work_s)
        self.write_effect(job, scheduled_at, status.get("fencing_token"), None)

    def fresh_term(self) -> Any:
        """This pod's term as the sidecar last said, asked at most every TERM_REFRESH_S: a write
        starts with the latest deadline (renewals move it), never one read before a long wait."""
        with self._term_lock:
            if time.monotonic() - self._term_asked_at >= TERM_REFRESH_S:
                self._term_asked_at = time.monotonic()
                self._term = self.sidecar.term()  # None unless leading (or the sidecar cannot be asked)
            return self._term

    def run_fenced(self, job: str, scheduled_at: datetime) -> None:
        term = self.fresh_term()
        if term is None or not term.is_valid():
            self._runs_lost = True
            return
        self.catch_up(term, before=scheduled_at)
        term = self.fresh_term()  # the catch-up may have taken a while
        if term is None or not self.write_effect(job, scheduled_at, term.fencing_token, term):
            self._runs_lost = True  # whatever stopped it, the next run looks in the ledger again

    def write_effect(self, job: str, scheduled_at: datetime, token: int | None, term: Any,
                     caught_up: bool = False) -> bool:
        """One execution. Naive (term None): an INSERT. Fenced: one transaction that fences the
        scope and claims the tick, does the job's work, and inserts its effect, so the effect
        commits with the claim (exactly once) or not at all. A write the term's end stops is
        recorded: `term_ended` (the client saw its deadline pass before starting), `stale_token`
        (the fence: a later term had written), `session_ended` (the server killed the transaction
        that sat idle past the term, e.g. a SIGSTOPped app)."""
        import psycopg
        from lease_sidecar_client import TermEnded
        from lease_sidecar_client import psycopg as fence_pg

        pod, mode = self.settings.pod, self.settings.mode
        try:
            conn = self.connections.get()
            if term is None:
                conn.execute(INSERT_EFFECT, (job, scheduled_at, token, pod, mode, caught_up))
            else:
                with fence_pg.fenced_transaction(conn, term):
                    if not fence_pg.claim_tick(conn, term, job, scheduled_at):
                        return True  # claimed before (a predecessor, or our catch-up): it ran once
                    time.sleep(self.settings.work_s)  # the job's work, inside its claim's transaction
                    conn.execute(INSERT_EFFECT, (job, scheduled_at, token, pod, mode, caught_up))
        except fence_pg.StaleToken:  # before TermEnded, its base class
            self.refused(job, scheduled_at, token, "stale_token")
            return False
        except TermEnded:
            self.refused(job, scheduled_at, token, "term_ended")
            return False
        except psycopg.OperationalError as error:
            self.connections.drop()
            if term is not None:  # nothing committed
                self.refused(job, scheduled_at, token, "session_ended")
            log.warning("%s %s: not written (%s)", job, scheduled_at.isoformat(), str(error).strip()[:200])
            return False
        self.runs += 1
        say(f"{'caught up' if caught_up else 'ran'} {job} tick {scheduled_at:%H:%M:%S} token {token} pod {pod}")
        return True

    def refused(self, job: str, scheduled_at: datetime, token: int | None, reason: str) -> None:
        self._refused_token = token
        say(f"REFUSED {job} tick {scheduled_at:%H:%M:%S} token {token}: {reason}")
        try:
            conn = self.connections.get()
            conn.execute(INSERT_REFUSAL, (job, scheduled_at, token, self.settings.pod, reason))
        except Exception as error:  # the record is best effort; the refusal stands
            self.connections.drop()
            log.warning("could not record the refusal: %s", error)

    def catch_up(self, term: Any, before: datetime) -> None:
        """Once per term: the ticks the ledger shows nobody claimed, from the misfire grace until
        `before`, run now (each claimed like any other run, so a tick is never run twice)."""
        if self._caught_up_token == term.fencing_token and not self._runs_lost:
            return
        # One catch-up at a time; runs arriving meanwhile go on with their own (current) ticks.
        if not self._catch_up_lock.acquire(blocking=False):
            return
        try:
            if self._caught_up_token == term.fencing_token and not self._runs_lost:
                return
            self._runs_lost = False
            since = before - timedelta(seconds=self.settings.misfire_grace_s)
            try:
                missed = self.missed_ticks(term, since, before)
            except Exception as error:  # retried on the next run
                self.connections.drop()
                self._runs_lost = True
                log.warning("catch-up: could not read the ledger: %s", error)
                return

            def run_missed(job: str, scheduled_at: datetime) -> None:
                now_term = self.fresh_term()
                ended = now_term is None or not term.same_term(now_term) or self._refused_token == term.fencing_token
                if ended or not self.write_effect(job, scheduled_at, now_term.fencing_token, now_term, caught_up=True):
                    # Not run (the term ended, or the sidecar did not answer in time): whoever
                    # leads next, this pod or another, looks in the ledger again.
                    self._runs_lost = True

            # Side by side: a minute of missed ticks must not take a minute of work to catch up.
            for future in [self._catch_up_pool.submit(run_missed, job, tick) for job, tick in missed]:
                future.result()
            self._caught_up_token = term.fencing_token
        finally:
            self._catch_up_lock.release()

    def missed_ticks(self, term: Any, since: datetime, until: datetime) -> list[tuple[str, datetime]]:
        """(job, tick) pairs of [since, until) that the ledger holds no claim for: the ticks nobody
        ran, within the misfire grace (`since`). Not only after the latest claim: a tick this very
        term lost (its write failed, a later one committed) is found too. Nothing before a job's
        first claim ever: the beat did not run then."""
        conn = self.connections.get()
        interval = timedelta(seconds=self.settings.interval_s)
        first = self.settings.tick_at_or_before(since) + interval
        missed: list[tuple[str, datetime]] = []
        if first >= until:
            return missed
        for job in self.settings.jobs:
            rows = conn.execute(UNCLAIMED_TICKS, {"first": first, "last": until - interval, "step": interval,
                                                  "scope": term.lease, "job": job}).fetchall()
            missed += [(job, tick) for (tick,) in rows]
        return sorted(missed, key=lambda pair: pair[1])

    def heartbeat(self) -> None:
        """From the scheduler's own loop: if it stops firing, the sidecar hands leadership on."""
        now = datetime.now(UTC)
        next_tick = self.settings.tick_at_or_before(now) + timedelta(seconds=self.settings.interval_s)
        try:
            self.sidecar.heartbeat(schedule_count=len(self.settings.jobs),
                                   next_due_task=f"{self.settings.jobs[0]}@{next_tick.isoformat()}")
        except OSError as error:
            log.info("heartbeat: sidecar not answering (%s)", error)


# ---------------------------------------------------------------- APScheduler


def tick_executor_class() -> type:
    from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
    from apscheduler.executors.pool import ThreadPoolExecutor

    class TickExecutor(ThreadPoolExecutor):
        """APScheduler 3's thread pool, handing each job its *scheduled* run time (the tick), which
        a job function is not otherwise told: a run that starts late still names its tick."""

        def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
            def run_all() -> list[Any]:
                events = []
                for run_time in run_times:
                    late_s = (datetime.now(UTC) - run_time).total_seconds()
                    if job.misfire_grace_time is not None and late_s > job.misfire_grace_time:
                        events.append(JobExecutionEvent(EVENT_JOB_MISSED, job.id, job._jobstore_alias, run_time))
                        continue
                    job.func(*job.args, **{**job.kwargs, "scheduled_at": run_time.astimezone(UTC)})
                    events.append(JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, job._jobstore_alias, run_time))
                return events

            def done(future: Any) -> None:
                if future.exception() is not None:
                    error = future.exception()
                    self._run_job_error(job.id, error, error.__traceback__)
                else:
                    self._run_job_success(job.id, future.result())

            self._pool.submit(run_all).add_done_callback(done)

    return TickExecutor


def run_apscheduler(settings: Settings) -> int:
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    conn = wait_for_database()
    install_schema(conn)
    conn.close()
    beat = Beat(settings)
    workers = 4 * len(settings.jobs) + 2  # a run sleeps work_s; catch-up runs in a run's thread
    # Heartbeats have a thread of their own: never queued behind runs (a long catch-up must not
    # look like a hung app to the sidecar).
    scheduler = BackgroundScheduler(executors={"default": tick_executor_class()(max_workers=workers),
                                               "heartbeat": ThreadPoolExecutor(max_workers=1)}, timezone=UTC)
    for job in settings.jobs:
        # A run that cannot start within one interval is left to the ledger's catch-up.
        scheduler.add_job(beat.run, IntervalTrigger(seconds=settings.interval_s, start_date=settings.anchor),
                          args=(job,), kwargs={"scheduled_at": None}, id=job, max_instances=8, coalesce=False,
                          misfire_grace_time=max(1, int(settings.interval_s)))
    scheduler.add_job(beat.heartbeat, IntervalTrigger(seconds=settings.heartbeat_s), id="heartbeat",
                      executor="heartbeat", max_instances=1, coalesce=True, misfire_grace_time=1)
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        # SIGTERM: give leadership up now (a standby takes over at once) and stop; without this,
        # PID 1 ignores SIGTERM and a native sidecar would hold the lease for the grace period.
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    scheduler.start()
    beat.heartbeat()
    print(f"{settings.pod}: {settings.mode} beat, jobs {', '.join(settings.jobs)} every {settings.interval_s:g}s "
          f"from {settings.anchor.isoformat()}", flush=True)
    stopping.wait()
    print(f"{settings.pod}: SIGTERM; resigning and exiting", flush=True)
    scheduler.shutdown(wait=False)
    try:
        beat.sidecar.resign(sit_out_s=0)
    except OSError:
        pass
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    command = argv[0] if argv else "apscheduler"
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"beat_app: {error}", file=sys.stderr)
        return 2
    if command == "apscheduler":
        return run_apscheduler(settings)
    if command in ("celery-beat", "celery-worker"):
        # Celery as PID 1 (exec): its own SIGTERM handling stops beat (LeaderScheduler resigns) or
        # lets the worker finish its tasks. Files go to /tmp: the root file system is read-only.
        wait_for_database().close()
        celery = ["celery", "--app", "beat_celery", "--workdir", "/tmp"]
        if command == "celery-beat":
            argv = [*celery, "beat", "--scheduler", "lease_sidecar_client.celery.LeaderScheduler",
                    "--pidfile=", "--schedule", "/tmp/celerybeat-schedule", "--loglevel", "INFO"]
        else:
            argv = [*celery, "worker", "--pool", "threads", "--concurrency", str(2 * len(settings.jobs)),
                    "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        os.execvp(argv[0], argv)
    print(f"beat_app: unknown command {command!r}: apscheduler, celery-beat or celery-worker", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
