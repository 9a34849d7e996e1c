"""APScheduler 3.11 led by real sidecars on the control plane, its ticks claimed in a real PostgreSQL
(lease_sidecar_client.apscheduler): jobs run only on the leader, each tick once across a SIGKILL of
the leading app and sidecar and a resign, the ticks missed meanwhile caught up from the ledger,
the term's token visible to the job. Executions are counted from `beat_effects`, a table with no
uniqueness of its own (tests/beat_apps.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.cluster import beat_helpers as beat
from tests.cluster.sidecars import wait_for

JOBS = 3


def start_instance(name: str, lease: str, namespace: str, tmp_path: Path, kubeconfig: Path, dsn: str,
                   run: str, *sidecar_args: str, work_s: float = 0.0) -> beat.Instance:
    sidecar = beat.start_sidecar(name, lease, namespace, tmp_path, kubeconfig, *sidecar_args)
    log = tmp_path / name / "app.log"
    app = beat.start_app(beat.apscheduler_argv(sidecar, dsn, run, name, JOBS, work_s), log)
    return beat.Instance(name, sidecar, app, log)


def test_each_tick_once_across_sigkill_and_resign(namespace: str, kubeconfig: Path, postgres_dsn: str,
                                                  tmp_path: Path) -> None:
    run, lease = f"aps-{uuid.uuid4().hex[:8]}", "beat-apscheduler"
    instances = [start_instance(name, lease, namespace, tmp_path, kubeconfig, postgres_dsn, run)
                 for name in ("alpha", "bravo")]
    try:
        wait_for(lambda: any(i.leads() for i in instances), timeout=30, interval=0.1)
        beat.wait_for_rows(postgres_dsn, run, lambda rows: len({r[1] for r in rows}) >= 3, timeout_s=30)
        # A crash of the leading pod, then a resign.
        leaders = beat.sigkill_the_leader_then_resign(
            instances, postgres_dsn, run, JOBS,
            lambda name: start_instance(name, lease, namespace, tmp_path, kubeconfig, postgres_dsn, run))
    finally:
        logs = beat.app_log_tails(instances)
        for instance in instances:
            instance.kill()

    rows = beat.each_tick_ran_once(postgres_dsn, run, logs)
    # The job saw its term's token, and a token belongs to one leader.
    assert None not in beat.executors_by_token(rows)
    beat.one_leader_per_token_in_order(rows, leaders)


def test_jobs_run_only_on_the_leader(namespace: str, kubeconfig: Path, postgres_dsn: str, tmp_path: Path) -> None:
    """Three replicas for a while: every execution comes from the one that leads, with its token."""
    run, lease = f"aps-{uuid.uuid4().hex[:8]}", "beat-apscheduler-only"
    instances = [start_instance(name, lease, namespace, tmp_path, kubeconfig, postgres_dsn, run)
                 for name in ("alpha", "bravo", "charlie")]
    try:
        wait_for(lambda: any(i.leads() for i in instances), timeout=30, interval=0.1)
        leader = beat.leader_of(instances)
        token = leader.token()
        rows = beat.wait_for_rows(postgres_dsn, run, lambda rows: len({r[1] for r in rows}) >= 5, timeout_s=30)
    finally:
        for instance in instances:
            instance.kill()
    assert {row[3] for row in rows} == {leader.name}
    assert {row[4] for row in rows} == {token}
    assert not beat.duplicates(rows)


def test_a_frozen_scheduler_hands_over_and_its_late_runs_are_refused(
        namespace: str, kubeconfig: Path, postgres_dsn: str, tmp_path: Path) -> None:
    """The leading app alone is frozen (SIGSTOP) past its sidecar's app-heartbeat TTL: its heartbeats
    (sent from the scheduler's loop) stop, its sidecar steps down, the other replica leads and catches
    up. Resumed (SIGCONT), the frozen app finds its term over: no tick runs twice, none is lost."""
    run, lease = f"aps-{uuid.uuid4().hex[:8]}", "beat-apscheduler-frozen"
    instances = [start_instance(name, lease, namespace, tmp_path, kubeconfig, postgres_dsn, run)
                 for name in ("alpha", "bravo")]
    try:
        wait_for(lambda: any(i.leads() for i in instances), timeout=30, interval=0.1)
        beat.wait_for_rows(postgres_dsn, run, lambda rows: len({r[1] for r in rows}) >= 3, timeout_s=30)
        beat.freeze_the_leading_app(instances, postgres_dsn, run, JOBS)
    finally:
        logs = beat.app_log_tails(instances)
        for instance in instances:
            instance.kill()
    beat.each_tick_ran_once(postgres_dsn, run, logs)


def test_a_drained_hand_over_lets_running_jobs_finish(namespace: str, kubeconfig: Path, postgres_dsn: str,
                                                      tmp_path: Path) -> None:
    """SIGTERM to the leader's sidecar with --handover-drain-timeout: it publishes `draining`; the
    app's heartbeat (from the scheduler loop) sees it, starts no new run, and resigns once its
    running jobs (each 0.3 s inside its claim's transaction) have committed; the other replica
    leads and catches up. No tick twice, none lost, the leader's sidecar exits 0."""
    run, lease = f"aps-{uuid.uuid4().hex[:8]}", "beat-apscheduler-drain"
    instances = [start_instance(name, lease, namespace, tmp_path, kubeconfig, postgres_dsn, run,
                                "--handover-drain-timeout", "10", work_s=0.3) for name in ("alpha", "bravo")]
    try:
        wait_for(lambda: any(i.leads() for i in instances), timeout=30, interval=0.1)
        beat.wait_for_rows(postgres_dsn, run, lambda rows: len({r[1] for r in rows}) >= 3, timeout_s=30)
        first = beat.leader_of(instances)
        other = next(i for i in instances if i is not first)
        first_token = first.token()
        assert first.sidecar.terminate(timeout=20) == 0
        wait_for(other.leads, timeout=20, interval=0.1)
        beat.wait_for_rows(postgres_dsn, run, lambda rows: sum(r[3] == other.name for r in rows) >= 4 * JOBS,
                           timeout_s=30)
    finally:
        logs = {i.name: i.app_log.read_text(errors="replace")[-3000:] for i in instances}
        sidecar_log = instances[0].sidecar.logs()[-3000:]
        for instance in instances:
            instance.kill()
    rows = beat.effects(postgres_dsn, run)
    assert not beat.duplicates(rows), f"ticks run twice: {beat.duplicates(rows)}"
    assert not beat.missing(rows), f"ticks never run: {beat.missing(rows)}\n{logs}"
    assert any(row[4] == first_token for row in rows)
    assert "hand-over requested" in logs[first.name], (logs[first.name], sidecar_log)
