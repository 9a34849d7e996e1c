"""The example beat's Celery variant: `celery beat` in every replica, led by its sidecar through
lease_sidecar_client.celery.LeaderScheduler (it sends a tick only while leading, after claiming it
in the ledger with the term's token), and a worker whose task checks the tick's ledger row and
writes its effect in the transaction that marks the tick finished (exactly once per tick).

    python -m beat_app celery-beat      # celery -A beat_celery beat -S lease_sidecar_client.celery.LeaderScheduler
    python -m beat_app celery-worker    # celery -A beat_celery worker

The same environment as the APScheduler app (beat_app.Settings: BEAT_JOBS, BEAT_INTERVAL_SECONDS,
BEAT_ANCHOR, BEAT_WORK_SECONDS, BEAT_MISFIRE_GRACE_SECONDS; PostgreSQL through libpq's PG*
variables), plus REDIS_URL, the broker.
"""

from __future__ import annotations

import sys
import time

from beat_app import INSERT_EFFECT, ConfigError, Settings, connect
from celery import Celery
from lease_sidecar_client.celery import LeaderTickTask, current_claim

try:
    settings = Settings.from_env()
    if not settings.redis_url:
        raise ConfigError("REDIS_URL: required for the Celery variant (the broker)")
except ConfigError as error:
    print(f"beat_celery: {error}", file=sys.stderr)
    raise SystemExit(2) from None

app = Celery("beat_celery", broker=settings.redis_url)
app.conf.update(
    # The ledger: libpq's PG* variables name the database (an empty conninfo reads them).
    lease_sidecar_dsn="",
    lease_sidecar_url=settings.sidecar_url,
    lease_sidecar_anchor=settings.anchor,
    lease_sidecar_misfire_grace_s=settings.misfire_grace_s,
    lease_sidecar_coalesce=False,  # every missed tick runs once, as in the APScheduler app
    beat_schedule={job: {"task": "beat_celery.run_job", "schedule": settings.interval_s, "args": (job,)}
                   for job in settings.jobs},
    broker_connection_retry_on_startup=True,
    task_acks_late=True,  # a worker killed mid-task: the message is delivered again, the ledger decides
    worker_prefetch_multiplier=1,
)


@app.task(base=LeaderTickTask, name="beat_celery.run_job")
def run_job(job: str) -> None:
    claim = current_claim()
    if claim is None:  # not sent by LeaderScheduler: nothing says which tick this is
        return
    time.sleep(settings.work_s)
    with connect() as conn, claim.transaction(conn):
        conn.execute(INSERT_EFFECT, (job, claim.scheduled_at, claim.token, settings.pod, "celery", False))
    print(f"ran {job} tick {claim.scheduled_at:%H:%M:%S} token {claim.token} worker {settings.pod}", flush=True)
