"""Celery 5 beat led by real sidecars (`celery beat -S lease_sidecar_client.celery.LeaderScheduler`),
a real worker on a real Redis broker, the ledger in a real PostgreSQL: only the leader sends; each
tick runs once across a SIGKILL of the leading beat and sidecar and a resign, missed ticks caught
up; a task queued before a failover still runs after it (the worker checks the tick's ledger row,
not the current leader's token); a message delivered twice runs once."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.beat_apps import install_effects
from tests.cluster import beat_helpers as beat
from tests.cluster.sidecars import wait_for

JOBS = 3


def celery_env(redis_url: str, dsn: str, run: str, instance: str, sidecar_url: str | None = None) -> dict[str, str]:
    env = {"BEAT_BROKER_URL": redis_url, "BEAT_DSN": dsn, "BEAT_SYSTEM": "lease-sidecar-celery", "BEAT_RUN": run,
           "BEAT_INSTANCE": instance, "BEAT_JOBS": str(JOBS)}
    if sidecar_url:
        env["LEASE_SIDECAR_URL"] = sidecar_url
    return env


def start_worker(redis_url: str, dsn: str, run: str, log: Path) -> subprocess.Popen[bytes]:
    return beat.start_app([sys.executable, "-m", "celery", "-A", "tests.beat_celery", "worker", "--pool", "threads",
                           "-c", "6", "-l", "info", "-n", f"worker-{run}@%h", "--without-gossip", "--without-mingle",
                           "--without-heartbeat"], log, celery_env(redis_url, dsn, run, "worker"))


def start_instance(name: str, lease: str, namespace: str, tmp_path: Path, kubeconfig: Path, dsn: str,
                   redis_url: str, run: str) -> beat.Instance:
    sidecar = beat.start_sidecar(name, lease, namespace, tmp_path, kubeconfig)
    log = tmp_path / name / "beat.log"
    app = beat.start_app([sys.executable, "-m", "celery", "-A", "tests.beat_celery", "beat", "-l", "info",
                          "-S", "lease_sidecar_client.celery.LeaderScheduler",
                          "--schedule", str(tmp_path / name / "beat-schedule")],
                         log, celery_env(redis_url, dsn, run, name, sidecar.url))
    return beat.Instance(name, sidecar, app, log)


@pytest.fixture()
def run_id(postgres_dsn: str) -> Iterator[str]:
    install_effects(postgres_dsn)
    yield f"cel-{uuid.uuid4().hex[:8]}"


def test_each_tick_once_across_sigkill_and_resign(namespace: str, kubeconfig: Path, postgres_dsn: str, redis_url: str,
                                                  run_id: str, tmp_path: Path) -> None:
    lease = "beat-celery"
    worker = start_worker(redis_url, postgres_dsn, run_id, tmp_path / "worker.log")
    instances = [start_instance(name, lease, namespace, tmp_path, kubeconfig, postgres_dsn, redis_url, run_id)
                 for name in ("alpha", "bravo")]
    try:
        wait_for(lambda: any(i.leads() for i in instances), timeout=40, interval=0.1)
        beat.wait_for_rows(postgres_dsn, run_id, lambda rows: len({r[1] for r in rows}) >= 3, timeout_s=40)
        leaders = beat.sigkill_the_leader_then_resign(
            instances, postgres_dsn, run_id, JOBS,
            lambda name: start_instance(name, lease, namespace, tmp_path, kubeconfig, postgres_dsn, redis_url, run_id))
    finally:
        logs = beat.app_log_tails(instances)
        for instance in instances:
            instance.kill()
        worker.kill()
        worker.wait(10)

    rows = beat.each_tick_ran_once(postgres_dsn, run_id, logs)
    beat.one_leader_per_token_in_order(rows, leaders)


def test_queued_task_runs_after_failover_and_a_duplicate_runs_once(
        namespace: str, kubeconfig: Path, postgres_dsn: str, redis_url: str, run_id: str, tmp_path: Path) -> None:
    """No worker while the first leader sends: its tasks wait in the queue; the leader is killed and
    another leads with a higher token; then a worker starts: the first term's tasks run (their
    ledger rows say so), and a copy of an already-run message is skipped."""
    lease = "beat-celery-queued"
    instances = [start_instance(name, lease, namespace, tmp_path, kubeconfig, postgres_dsn, redis_url, run_id)
                 for name in ("alpha", "bravo")]
    worker = None
    try:
        wait_for(lambda: any(i.leads() for i in instances), timeout=40, interval=0.1)
        first = beat.leader_of(instances)
        first_token = first.token()
        wait_for(lambda: "Sending due task" in first.app_log.read_text(errors="replace"), timeout=30, interval=0.2)
        first.kill()
        wait_for(lambda: any(i.leads() for i in instances if i is not first), timeout=40, interval=0.1)
        second = beat.leader_of([i for i in instances if i is not first])
        assert second.token() > first_token
        worker = start_worker(redis_url, postgres_dsn, run_id, tmp_path / "worker.log")
        beat.wait_for_rows(postgres_dsn, run_id, lambda rows: any(r[4] == second.token() for r in rows), timeout_s=60)
        rows = beat.effects(postgres_dsn, run_id)
        assert any(row[4] == first_token for row in rows), "the first term's queued tasks did not run"

        # Deliver one of the first term's messages again: its tick is finished, so it is skipped.
        job, tick, *_ = next(row for row in rows if row[4] == first_token)
        headers = {"lease_scope": f"{namespace}/{lease}", "lease_job": job, "lease_scheduled_at": tick.isoformat(),
                   "lease_token": first_token, "bench_sender": "replay"}
        send = ("from tests.beat_celery import app; import json, sys; "
                "app.send_task('beat.tick_claimed', kwargs=json.loads(sys.argv[1]), headers=json.loads(sys.argv[2]))")
        subprocess.run([sys.executable, "-c", send, json.dumps({"run": run_id, "system": "lease-sidecar-celery",
                                                                "job": job}), json.dumps(headers)],
                       check=True, cwd=beat.ROOT, env={**beat.os.environ, "PYTHONPATH": str(beat.ROOT),
                                                      **celery_env(redis_url, postgres_dsn, run_id, "replay")},
                       timeout=60)
        wait_for(lambda: "finished already" in (tmp_path / "worker.log").read_text(errors="replace"), timeout=30,
                 interval=0.2)
    finally:
        for instance in instances:
            instance.kill()
        if worker is not None:
            worker.kill()
            worker.wait(10)
    rows = beat.effects(postgres_dsn, run_id)
    assert not beat.duplicates(rows), beat.duplicates(rows)
    assert "replay" not in {row[3] for row in rows}


def test_a_frozen_beat_hands_over_and_sends_nothing_late(namespace: str, kubeconfig: Path, postgres_dsn: str,
                                                         redis_url: str, run_id: str, tmp_path: Path) -> None:
    """The leading `celery beat` alone is frozen (SIGSTOP) past its sidecar's app-heartbeat TTL: its
    heartbeats (from beat's loop) stop, its sidecar steps down, the other beat leads and catches up.
    Resumed, the frozen beat learns at its first heartbeat that it no longer leads: no tick twice,
    none lost."""
    lease = "beat-celery-frozen"
    worker = start_worker(redis_url, postgres_dsn, run_id, tmp_path / "worker.log")
    instances = [start_instance(name, lease, namespace, tmp_path, kubeconfig, postgres_dsn, redis_url, run_id)
                 for name in ("alpha", "bravo")]
    try:
        wait_for(lambda: any(i.leads() for i in instances), timeout=40, interval=0.1)
        beat.wait_for_rows(postgres_dsn, run_id, lambda rows: len({r[1] for r in rows}) >= 3, timeout_s=40)
        beat.freeze_the_leading_app(instances, postgres_dsn, run_id, JOBS)
    finally:
        logs = beat.app_log_tails(instances)
        for instance in instances:
            instance.kill()
        worker.kill()
        worker.wait(10)
    beat.each_tick_ran_once(postgres_dsn, run_id, logs)
