"""Pairs of (sidecar, scheduler app) on the shared control plane, and the effect table's verdicts,
for the APScheduler and Celery beat integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from tests.cluster import sidecars

ROOT = Path(__file__).resolve().parents[2]
APP_HEARTBEAT_TTL = ("--app-heartbeat-ttl", "3")


@dataclass
class Instance:
    """One replica: its sidecar and its app (what a pod holds)."""

    name: str
    sidecar: sidecars.Sidecar
    app: subprocess.Popen[bytes]
    app_log: Path
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [self.app, *self.extra, self.sidecar.process]

    def signal_all(self, sig: int) -> None:
        """The app (and what it started: its own process group) and the sidecar."""
        for process in [self.app, *self.extra]:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    pass
        if self.sidecar.process.poll() is None:
            self.sidecar.process.send_signal(sig)

    def kill(self) -> None:
        self.signal_all(signal.SIGKILL)
        for process in self.processes():
            process.wait(10)

    def leads(self) -> bool:
        body = self.sidecar.leader()
        return bool(body and body.get("is_leader"))

    def token(self) -> int | None:
        body = self.sidecar.leader()
        return body.get("fencing_token") if body and body.get("is_leader") else None


def start_app(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, start_new_session=True)


def start_sidecar(name: str, lease: str, namespace: str, workdir: Path, kubeconfig: Path,
                  *extra_args: str) -> sidecars.Sidecar:
    """A sidecar that leads only while its app heartbeats (it is not Ready before: wait for its API)."""
    sidecar = sidecars.start(name, lease, namespace, workdir, *APP_HEARTBEAT_TTL, *extra_args, kubeconfig=kubeconfig,
                             wait_ready=False)
    sidecars.wait_for(lambda: sidecar.leader() is not None or not sidecar.alive(), timeout=20)
    if not sidecar.alive():
        raise AssertionError(f"{name} exited: {sidecar.logs()[-2000:]}")
    return sidecar


def apscheduler_argv(sidecar: sidecars.Sidecar, dsn: str, run: str, name: str, jobs: int = 3,
                     work_s: float = 0.0) -> list[str]:
    return [sys.executable, "-m", "tests.beat_apps", "apscheduler", "--sidecar", sidecar.url, "--dsn", dsn,
            "--run", run, "--name", name, "--jobs", str(jobs), "--work-s", str(work_s)]


def effects(dsn: str, run: str) -> list[tuple[str, datetime, datetime, str, int | None]]:
    """(job, tick, executed_at, executor, token) of a run, in execution order."""
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT job, tick, executed_at, executor, token FROM beat_effects WHERE run = %s"
                            " ORDER BY executed_at", (run,)).fetchall()


def wait_for_rows(dsn: str, run: str, predicate: Any, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = effects(dsn, run)
        if predicate(rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"effects of {run} never met the condition within {timeout_s}s; last rows: {rows[-10:]}")


def duplicates(rows: list[Any]) -> dict[tuple[str, datetime], int]:
    counts = Counter((job, tick) for job, tick, *_ in rows)
    return {key: count for key, count in counts.items() if count > 1}


def missing(rows: list[Any], every_s: float = 1.0) -> dict[str, list[datetime]]:
    """Per job, the ticks between its first and last execution that never ran."""
    result: dict[str, list[datetime]] = {}
    for job in sorted({row[0] for row in rows}):
        ticks = sorted({row[1] for row in rows if row[0] == job})
        expected, moment = [], ticks[0]
        while moment <= ticks[-1]:
            expected.append(moment)
            moment += timedelta(seconds=every_s)
        gaps = sorted(set(expected) - set(ticks))
        if gaps:
            result[job] = gaps
    return result


def executors_by_token(rows: list[Any]) -> dict[int, set[str]]:
    result: dict[int, set[str]] = {}
    for _job, _tick, _at, executor, token in rows:
        result.setdefault(token, set()).add(executor)
    return result


def leader_of(instances: list[Instance]) -> Instance:
    leading = [instance for instance in instances if instance.sidecar.alive() and instance.leads()]
    assert len(leading) == 1, [instance.name for instance in leading]
    return leading[0]


def freeze_the_leading_app(instances: list[Instance], dsn: str, run: str, jobs: int) -> Instance:
    """SIGSTOPs the leading app alone (its sidecar runs on) until another instance leads and has run
    every job three times, then SIGCONTs it; waits for eight rounds by the new leader, which must
    still lead. Returns the new leader."""
    frozen = leader_of(instances)
    other = next(i for i in instances if i is not frozen)
    frozen.app.send_signal(signal.SIGSTOP)
    try:
        sidecars.wait_for(other.leads, timeout=30, interval=0.1)
        wait_for_rows(dsn, run, lambda rows: sum(r[3] == other.name for r in rows) >= 3 * jobs, timeout_s=30)
    finally:
        frozen.app.send_signal(signal.SIGCONT)
    wait_for_rows(dsn, run, lambda rows: sum(r[3] == other.name for r in rows) >= 8 * jobs, timeout_s=30)
    assert leader_of(instances) is other, f"{other.name} no longer leads after the frozen app resumed"
    return other


def sigkill_the_leader_then_resign(instances: list[Instance], dsn: str, run: str, jobs: int,
                                   start_another: Callable[[str], Instance]) -> list[Instance]:
    """Two hand-overs, each waited out until the new leader has run every job three times: the
    leading pod crashes (app and sidecar SIGKILLed together; `start_another("charlie")` joins as a
    third candidate, appended to `instances`), then the next leader resigns (POST
    /leader/resign?sit_out=30). Returns the three leaders in order."""
    first = leader_of(instances)
    first.kill()
    instances.append(start_another("charlie"))
    wait_for_rows(dsn, run, lambda rows: any(r[3] != first.name for r in rows[-jobs:]), timeout_s=40)
    second = leader_of(instances)
    assert second is not first, f"{first.name} leads again after its SIGKILL"
    wait_for_rows(dsn, run, lambda rows: sum(r[3] == second.name for r in rows) >= 3 * jobs, timeout_s=30)

    # A resign: the leader gives its term up, another candidate leads and catches up.
    status, _ = second.sidecar.post("/leader/resign?sit_out=30")
    assert status == 200, f"resign answered {status}"
    wait_for_rows(dsn, run, lambda rows: sum(r[3] not in (first.name, second.name) for r in rows) >= 3 * jobs,
                  timeout_s=40)
    third = leader_of(instances)
    assert third not in (first, second), f"{third.name} leads again after the hand-overs"
    return [first, second, third]


def app_log_tails(instances: list[Instance]) -> dict[str, str]:
    """The end of each app's log, read before the instances are killed, for failure messages."""
    return {i.name: i.app_log.read_text(errors="replace")[-3000:] for i in instances}


def each_tick_ran_once(dsn: str, run: str, logs: dict[str, str]) -> list[Any]:
    """Checks the run's effects: no tick twice, and every tick from the first to the last ran (those
    missed during a hand-over were caught up). Returns the rows."""
    rows = effects(dsn, run)
    assert not duplicates(rows), f"ticks run twice: {duplicates(rows)}"
    assert not missing(rows), f"ticks never run: {missing(rows)}\n{logs}"
    return rows


def one_leader_per_token_in_order(rows: list[Any], leaders: list[Instance]) -> None:
    """Each term's token was seen by one executor only, and the terms ran in `leaders`' order."""
    by_token = executors_by_token(rows)
    assert all(len(names) == 1 for names in by_token.values()), by_token
    assert [next(iter(by_token[t])) for t in sorted(by_token)] == [leader.name for leader in leaders], by_token
