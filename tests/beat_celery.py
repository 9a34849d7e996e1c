"""A Celery app whose beat entries tick, for the Celery beat tests and `make bench-beat`.

One module for the worker and every beat variant; the environment says which:

    BEAT_BROKER_URL   Redis broker (the worker's)         BEAT_DSN      PostgreSQL (effects, ledger)
    BEAT_SYSTEM       lease-sidecar-celery | celery-redbeat | single-beat | celery-redbeat-default
    BEAT_RUN          run id (kwargs of each entry)       BEAT_INSTANCE who sends (a header)
    BEAT_JOBS (3)     BEAT_EVERY_S (1)                    LEASE_SIDECAR_URL  the beat's sidecar
    BEAT_COORD_REDIS_URL  RedBeat's / single-beat's Redis  REDBEAT_LOCK_TIMEOUT_S (5)

Each execution inserts one row into `beat_effects` (tests/beat_apps.py). Tasks sent by
LeaderScheduler carry their claim and write through `current_claim().transaction(conn)` (exactly
once); the others are labelled with the time their beat sent them (`bench_sent_at`, a header
added at publish time), the only tick identity plain beat has.

    celery -A tests.beat_celery worker --pool threads -c 6
    celery -A tests.beat_celery beat -S lease_sidecar_client.celery.LeaderScheduler
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from celery import Celery, signals
from lease_sidecar_client.celery import LeaderTickTask, current_claim

from tests.beat_apps import job_names

SYSTEM = os.environ.get("BEAT_SYSTEM", "lease-sidecar-celery")
RUN = os.environ.get("BEAT_RUN", "run")
INSTANCE = os.environ.get("BEAT_INSTANCE", "beat")
DSN = os.environ.get("BEAT_DSN", "")
JOBS = int(os.environ.get("BEAT_JOBS", "3"))
EVERY_S = float(os.environ.get("BEAT_EVERY_S", "1"))
CLAIMED = SYSTEM == "lease-sidecar-celery"

app = Celery("beat", broker=os.environ.get("BEAT_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_ignore_result=True,
    timezone="UTC",
    lease_sidecar_dsn=DSN,
    # Every missed tick caught up (within the grace), not folded into one: what the tests count.
    lease_sidecar_coalesce=os.environ.get("BEAT_COALESCE", "false"),
    lease_sidecar_misfire_grace_s=30,
    beat_schedule={name: {"task": "beat.tick_claimed" if CLAIMED else "beat.tick_plain", "schedule": EVERY_S,
                          "kwargs": {"run": RUN, "system": SYSTEM, "job": name}} for name in job_names(JOBS)},
)
if SYSTEM == "celery-redbeat":
    app.conf.update(redbeat_redis_url=os.environ.get("BEAT_COORD_REDIS_URL"), redbeat_key_prefix=f"redbeat:{RUN}",
                    redbeat_lock_timeout=int(float(os.environ.get("REDBEAT_LOCK_TIMEOUT_S", "5"))),
                    beat_max_loop_interval=1)
elif SYSTEM == "celery-redbeat-default":
    # RedBeat as installed: lock timeout 5 x beat_max_loop_interval (300 s) = 1500 s.
    app.conf.update(redbeat_redis_url=os.environ.get("BEAT_COORD_REDIS_URL"), redbeat_key_prefix=f"redbeat:{RUN}")
else:
    app.conf.update(beat_max_loop_interval=1)

_local = threading.local()


def connection() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(DSN, autocommit=True)
    return conn


def _request_header(request: Any, name: str) -> Any:
    headers = getattr(request, "headers", None) or {}
    return headers.get(name) if isinstance(headers, dict) and name in headers else getattr(request, name, None)


@signals.before_task_publish.connect
def _label(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Beat side: who sent the task, and when (plain beat's only tick identity)."""
    if headers is not None:
        headers.setdefault("bench_sender", INSTANCE)
        headers.setdefault("bench_sent_at", time.time())


@app.task(name="beat.tick_claimed", base=LeaderTickTask, bind=True)
def tick_claimed(self: Any, run: str, system: str, job: str) -> None:
    claim = current_claim()
    if claim is None:
        raise RuntimeError("beat.tick_claimed without a claim: not sent by LeaderScheduler")
    conn = connection()
    with claim.transaction(conn):
        conn.execute("INSERT INTO beat_effects (run, system, job, tick, executor, token) VALUES (%s, %s, %s, %s, %s,"
                     " %s)", (run, system, job, claim.scheduled_at, _request_header(self.request, "bench_sender"),
                              claim.token))


@app.task(name="beat.tick_plain", bind=True)
def tick_plain(self: Any, run: str, system: str, job: str) -> None:
    sent_at = _request_header(self.request, "bench_sent_at")
    tick = datetime.fromtimestamp(float(sent_at), UTC) if sent_at is not None else datetime.now(UTC)
    connection().execute("INSERT INTO beat_effects (run, system, job, tick, executor) VALUES (%s, %s, %s, %s, %s)",
                         (run, system, job, tick, _request_header(self.request, "bench_sender")))
