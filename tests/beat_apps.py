"""Apps whose jobs tick, for the scheduler tests and `make bench-beat`: each execution inserts one row
into `beat_effects`, a table with no uniqueness of its own, so a tick run twice shows as two rows.

    python -m tests.beat_apps apscheduler --sidecar URL --dsn DSN --run R --name A [--jobs 3] [--every-s 1]
    python -m tests.beat_apps naive       --sidecar URL --dsn DSN --run R --name A

`apscheduler`: APScheduler 3 with lease_sidecar_client.apscheduler (LeaderExecutor, lead()); each
job writes its row through the claim's connection (exactly once). `naive`: a loop on the same
ticks that asks `is_leader()` before each run, as a user without the ledger and fence would.
The Celery variants live in tests/beat_celery.py (a Celery app module).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

ANCHOR = datetime(2026, 1, 1, tzinfo=UTC)
EFFECTS_SQL = """
CREATE TABLE IF NOT EXISTS beat_effects (
    run          text        NOT NULL,
    system       text        NOT NULL,
    job          text        NOT NULL,
    tick         timestamptz NOT NULL,   -- the scheduled time this execution ran for
    executed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    executor     text        NOT NULL,   -- which instance (or worker) ran it
    token        bigint                  -- the fencing token it ran with, if any
);
CREATE INDEX IF NOT EXISTS beat_effects_run ON beat_effects (run, job, tick);
"""


def job_names(count: int) -> list[str]:
    return [f"job-{index}" for index in range(count)]


def install_effects(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(4242)")
        conn.execute(EFFECTS_SQL)
        conn.execute("SELECT pg_advisory_unlock(4242)")


def run_apscheduler(args: argparse.Namespace) -> int:
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.interval import IntervalTrigger
    from lease_sidecar_client import current_term
    from lease_sidecar_client.apscheduler import LeaderExecutor, current_tick, lead

    def effect(job: str) -> None:
        tick, term = current_tick(), current_term()
        assert tick is not None and tick.connection is not None and term is not None
        if args.work_s:
            time.sleep(args.work_s)
        tick.connection.execute(
            "INSERT INTO beat_effects (run, system, job, tick, executor, token) VALUES (%s, %s, %s, %s, %s, %s)",
            (args.run, args.system, job, tick.scheduled_at, args.name, term.fencing_token))

    executor = LeaderExecutor(dsn=args.dsn, sidecar=args.sidecar, max_workers=max(4, args.jobs * 2))
    scheduler = BlockingScheduler(executors={"default": executor}, timezone=UTC,
                                  job_defaults={"misfire_grace_time": args.misfire_grace_s, "coalesce": False,
                                                "max_instances": 5})
    for job in job_names(args.jobs):
        scheduler.add_job(effect, IntervalTrigger(seconds=args.every_s, start_date=ANCHOR), args=[job], id=job)
    lead(scheduler)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.shutdown(wait=False))
    scheduler.start()
    return 0


def run_naive(args: argparse.Namespace) -> int:
    """The loop a user writes without the ledger: on each tick, ask the sidecar, then run."""
    import psycopg
    from lease_sidecar_client import Sidecar

    sidecar = Sidecar(args.sidecar, request_timeout_s=1.0)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    conn = psycopg.connect(args.dsn, autocommit=True)
    every = timedelta(seconds=args.every_s)
    count = 0
    while not stopping:
        now = datetime.now(UTC)
        tick = ANCHOR + ((now - ANCHOR) // every + 1) * every
        time.sleep(max(0.0, (tick - datetime.now(UTC)).total_seconds()))
        count += 1
        status = sidecar.heartbeat(schedule_count=args.jobs, next_due_task=job_names(args.jobs)[0])
        for job in job_names(args.jobs):
            if sidecar.is_leader():
                if args.work_s:
                    time.sleep(args.work_s)
                conn.execute("INSERT INTO beat_effects (run, system, job, tick, executor, token)"
                             " VALUES (%s, %s, %s, %s, %s, %s)",
                             (args.run, args.system, job, tick, args.name, (status or {}).get("fencing_token")))
    sidecar.resign(0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("apscheduler", "naive"))
    parser.add_argument("--sidecar", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--system", default=None)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--every-s", type=float, default=1.0)
    parser.add_argument("--misfire-grace-s", type=float, default=30.0)
    parser.add_argument("--work-s", type=float, default=0.0, help="time each job takes before its write")
    args = parser.parse_args(argv)
    args.system = args.system or {"apscheduler": "lease-sidecar-apscheduler", "naive": "naive-poll"}[args.kind]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(name)s %(levelname)s %(message)s")
    install_effects(args.dsn)
    runner: dict[str, Any] = {"apscheduler": run_apscheduler, "naive": run_naive}
    return runner[args.kind](args)


if __name__ == "__main__":
    sys.exit(main())
