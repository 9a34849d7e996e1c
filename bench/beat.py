"""`make bench-beat`: scheduled work under faults, side by side with the beat schedulers people use.

The same jobs (BEAT_JOBS=3, each every BEAT_EVERY_S=1 s) run on five systems side by side, each as
two instances (what two pods would hold) on this machine, each on a lease or lock of its own:

    lease-sidecar-apscheduler  sidecar + APScheduler 3 with lease_sidecar_client.apscheduler
    lease-sidecar-celery       sidecar + celery beat -S lease_sidecar_client.celery.LeaderScheduler
    celery-redbeat             celery beat -S redbeat.RedBeatScheduler, lock timeout 5 s, loop 1 s
    single-beat                single-beat (Redis lock 5 s, heartbeat 1 s) around celery beat
    naive-poll                 sidecar + a loop that asks is_leader() before each run

Sidecars run against the local control plane (lease TTL 4 s, renewal 1 s, app heartbeat TTL 3 s);
PostgreSQL and Redis are started by tests/servers.py (Debian packages); the Celery systems share one
worker on a Redis broker, and RedBeat and single-beat each keep their lock in a Redis of their own,
so its request count is theirs alone. Each execution inserts a row into an effect table with no uniqueness
(tests/beat_apps.py, tests/beat_celery.py).

Per fault (`sigkill` of the active instance's processes, `sigstop` of them for BEAT_STOP_S=7 s,
past every lease and lock, then SIGCONT, `sigterm`) and round (BEAT_ROUNDS=5): both instances
start on a fresh lease or lock, run BEAT_STEADY_S=4 s, the fault hits the instance that ran the
latest execution, BEAT_OBSERVE_S=20 s pass, everything is killed, and the effect table is read over
the ticks from 2 s before the fault to 2 s before the end:

    beat_duplicate_ticks_<fault>  executions beyond one per (job, tick), summed over the jobs
    beat_missed_ticks_<fault>     ticks of that window with no execution, summed over the jobs
    beat_gap_s_<fault>            longest time between two executions of one job (when the beat stopped)
    beat_backend_requests_per_min requests to the coordination backend in the steady windows: the
                                  apiserver (audit log, both sidecars) or the lock's Redis (INFO
                                  commandstats), per system, pooled over all its rounds

A tick is the scheduled time the execution ran for: the ledger's for this project's systems and
the naive loop's own aligned tick; for RedBeat and single-beat, which know no scheduled time, the
moment their beat published the task (one tick per BEAT_EVERY_S slot). RedBeat as installed (lock
timeout 5 x beat_max_loop_interval = 1500 s) is measured once per fault as `celery-redbeat-default`
(BEAT_REDBEAT_DEFAULT=0 skips it): its takeover lies beyond the window, so its figures are lower bounds.

Its rows are merged into bench/results.json (bench/results.py: each measured (system, scenario) row
replaces the old one, every other row stays); the rounds go to bench/beat_details.json.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import localcluster  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
import results  # noqa: E402  (bench/results.py, beside this script)

from tests import servers  # noqa: E402
from tests.beat_apps import install_effects  # noqa: E402
from tests.cluster import sidecars  # noqa: E402

ROUNDS = int(os.environ.get("BEAT_ROUNDS", "5"))
JOBS = int(os.environ.get("BEAT_JOBS", "3"))
EVERY_S = float(os.environ.get("BEAT_EVERY_S", "1"))
STEADY_S = float(os.environ.get("BEAT_STEADY_S", "4"))
OBSERVE_S = float(os.environ.get("BEAT_OBSERVE_S", "20"))
STOP_S = float(os.environ.get("BEAT_STOP_S", "7"))
MARGIN_S = 2.0
"""Ticks this close to the window's end are left out: a catch-up or a queued task may still run."""
START_TIMEOUT_S = 40.0
REDBEAT_DEFAULT = os.environ.get("BEAT_REDBEAT_DEFAULT", "1") not in ("0", "", "false")
NAMESPACE = "lease-bench-beat"
FAULTS = ("sigkill", "sigstop", "sigterm")
ALL_SYSTEMS = ("lease-sidecar-apscheduler", "lease-sidecar-celery", "celery-redbeat", "single-beat", "naive-poll")
SYSTEMS = tuple(os.environ["BEAT_SYSTEMS"].split(",")) if os.environ.get("BEAT_SYSTEMS") else ALL_SYSTEMS
"""BEAT_SYSTEMS=a,b measures only those (their rows are replaced, the others' kept)."""
WITH_SIDECAR = ("lease-sidecar-apscheduler", "lease-sidecar-celery", "naive-poll")
REDIS_LOCKED = ("celery-redbeat", "single-beat")
SHORT = {"lease-sidecar-apscheduler": "lsa", "lease-sidecar-celery": "lsc", "celery-redbeat": "rb",
         "celery-redbeat-default": "rbd", "single-beat": "sb", "naive-poll": "np"}
LOG_DIR = localcluster.CACHE_DIR / "bench-beat" / "logs"
SCENARIO_UNITS = {"beat_duplicate_ticks": "ticks", "beat_missed_ticks": "ticks", "beat_gap_s": "s"}


def say(message: str) -> None:
    print(f"[bench-beat {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- the control plane's identities


def kubectl(*args: str, stdin: str | None = None) -> str:
    binary = localcluster.TOOLS["kubectl"].cache_path()
    done = subprocess.run([str(binary), "--kubeconfig", str(localcluster.Paths().kubeconfig), *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args[:3])} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def identity(system: str, index: int) -> str:
    return f"beat-{SHORT[system]}-{index}"


def kubeconfig_for(name: str) -> Path:
    return LOG_DIR.parent / "kubeconfigs" / f"{name}.kubeconfig"


def setup_identities() -> None:
    """A ServiceAccount per sidecar (so the audit log tells whose request it was), allowed leases."""
    names = [identity(system, index) for system in WITH_SIDECAR for index in (0, 1)]
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        *({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}}
          for name in names),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "beat-candidate", "namespace": NAMESPACE},
         "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                    "verbs": ["get", "list", "watch", "create", "update", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "beat-candidates", "namespace": NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "beat-candidate"},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE} for name in names]},
    ]
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    kubeconfig_for("x").parent.mkdir(parents=True, exist_ok=True)
    ca = localcluster.Paths().pki / "ca.crt"
    for name in names:
        token = kubectl("create", "token", name, "-n", NAMESPACE, "--duration", "3h").strip()
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "local",
                  "clusters": [{"name": "local", "cluster": {
                      "server": f"https://127.0.0.1:{localcluster.APISERVER_PORT}", "certificate-authority": str(ca)}}],
                  "users": [{"name": name, "user": {"token": token}}],
                  "contexts": [{"name": "local",
                                "context": {"cluster": "local", "user": name, "namespace": NAMESPACE}}]}
        path = kubeconfig_for(name)
        path.write_text(json.dumps(config) + "\n")
        path.chmod(0o600)


def apiserver_requests(start_offset: int, windows: list[tuple[str, float, float]]) -> dict[str, float]:
    """Per system, requests its sidecars began in its steady windows, per minute (audit log, one
    event per auditID, timed by requestReceivedTimestamp)."""
    seen: dict[str, tuple[str, float]] = {}
    prefix = f"system:serviceaccount:{NAMESPACE}:"
    with open(localcluster.Paths().audit_log, encoding="utf-8", errors="replace") as log:
        log.seek(start_offset)
        for line in log:
            if prefix not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            user = (event.get("user") or {}).get("username", "")
            if not user.startswith(prefix) or event.get("auditID") in seen:
                continue
            received = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            seen[event["auditID"]] = (user[len(prefix):], received)
    counts: Counter[str] = Counter()
    minutes: Counter[str] = Counter()
    for system, start, end in windows:
        minutes[system] += (end - start) / 60
        mine = (identity(system, 0), identity(system, 1))
        counts[system] += sum(1 for user, at in seen.values() if user in mine and start <= at < end)
    return {system: counts[system] / minutes[system] for system in minutes if minutes[system]}


# ---------------------------------------------------------------- instances


@dataclass
class Instance:
    """What one pod would hold: the scheduler process (its own process group: single-beat's child
    beat included) and, for this project's systems, its sidecar."""

    name: str
    app: subprocess.Popen[bytes]
    sidecar: sidecars.Sidecar | None = None
    logs: list[Path] = field(default_factory=list)

    def signal(self, sig: int, whole_group: bool = True) -> None:
        if self.app.poll() is None:
            try:
                if whole_group:
                    os.killpg(self.app.pid, sig)
                else:
                    self.app.send_signal(sig)
            except ProcessLookupError:
                pass
        if self.sidecar is not None and self.sidecar.alive():
            self.sidecar.process.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.app.wait(10)
        if self.sidecar is not None:
            self.sidecar.process.wait(10)


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.postgres = servers.start_postgres()
        self.broker = servers.start_redis()
        # A Redis of its own for each system that locks in Redis: its command count is that system's alone.
        self.lock_redis = {system: servers.start_redis() for system in REDIS_LOCKED if system in SYSTEMS}
        self.lock_clients = {system: redis.Redis.from_url(server.url)  # one connection: its handshake counted once
                             for system, server in self.lock_redis.items()}
        self.dsn = self.postgres.dsn
        install_effects(self.dsn)
        self.worker: subprocess.Popen[bytes] | None = None
        self.instances: list[Instance] = []  # every one started, killed at the end whatever happened
        self.values: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.steady: list[tuple[str, float, float]] = []
        self.redis_rates: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.details: dict[str, Any] = {"rounds": [], "errors": []}

    def env(self, system: str, run: str, name: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT), "BEAT_BROKER_URL": self.broker.url, "BEAT_DSN": self.dsn,
                "BEAT_SYSTEM": system, "BEAT_RUN": run, "BEAT_INSTANCE": name, "BEAT_JOBS": str(JOBS),
                "BEAT_EVERY_S": str(EVERY_S), "BEAT_COORD_REDIS_URL": self.lock_url(system),
                "REDBEAT_LOCK_TIMEOUT_S": "5"}

    def lock_url(self, system: str) -> str:
        server = self.lock_redis.get("celery-redbeat" if system == "celery-redbeat-default" else system)
        return server.url if server is not None else ""

    def spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                                start_new_session=True)

    def start_worker(self) -> None:
        self.worker = self.spawn([sys.executable, "-m", "celery", "-A", "tests.beat_celery", "worker", "--pool",
                                  "threads", "-c", "8", "-l", "warning", "-n", "bench-beat@%h", "--without-gossip",
                                  "--without-mingle", "--without-heartbeat"],
                                 LOG_DIR / "worker.log", self.env("lease-sidecar-celery", "worker", "worker"))

    def start_sidecar(self, name: str, lease: str, folder: Path) -> sidecars.Sidecar:
        """A sidecar with the tests' timing (tests/cluster/sidecars.py) that leads only while its app
        heartbeats, in a session of its own: the kernel's autogroup then gives it its own share of
        the CPU, as a container would have, instead of a slice of this script's session."""
        http_port, metrics_port = sidecars.free_port(), sidecars.free_port()
        log = folder / "sidecar.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "sidecar", "run", "--lease-name", lease, "--namespace", NAMESPACE,
                "--identity", name, "--http-address", f"127.0.0.1:{http_port}",
                "--metrics-address", f"127.0.0.1:{metrics_port}", "--role-dir", str(folder / "role"),
                "--kubeconfig", str(kubeconfig_for(name)), *sidecars.FAST, "--app-heartbeat-ttl", "3"]
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                                   start_new_session=True)
        return sidecars.Sidecar(name, process, http_port, metrics_port, folder / "role", log)

    def start_instance(self, system: str, index: int, run: str, lease: str) -> Instance:
        name = identity(system, index)
        folder = LOG_DIR / run.replace("/", "_") / name
        env = self.env(system, run, name)
        sidecar = None
        if system in WITH_SIDECAR:
            sidecar = self.start_sidecar(name, lease, folder)
        celery_beat = [sys.executable, "-m", "celery", "-A", "tests.beat_celery", "beat", "-l", "info",
                       "--schedule", str(folder / "celerybeat-schedule")]
        if system == "lease-sidecar-apscheduler":
            assert sidecar is not None
            argv = [sys.executable, "-m", "tests.beat_apps", "apscheduler", "--sidecar", sidecar.url, "--dsn",
                    self.dsn, "--run", run, "--name", name, "--jobs", str(JOBS), "--every-s", str(EVERY_S)]
        elif system == "naive-poll":
            assert sidecar is not None
            argv = [sys.executable, "-m", "tests.beat_apps", "naive", "--sidecar", sidecar.url, "--dsn", self.dsn,
                    "--run", run, "--name", name, "--jobs", str(JOBS), "--every-s", str(EVERY_S)]
        elif system == "lease-sidecar-celery":
            assert sidecar is not None
            env["LEASE_SIDECAR_URL"] = sidecar.url
            argv = [*celery_beat, "-S", "lease_sidecar_client.celery.LeaderScheduler"]
        elif system in ("celery-redbeat", "celery-redbeat-default"):
            argv = [*celery_beat, "-S", "redbeat.RedBeatScheduler"]
        elif system == "single-beat":
            env.update(SINGLE_BEAT_REDIS_SERVER=self.lock_url(system), SINGLE_BEAT_IDENTIFIER=run.replace("/", "-"),
                       SINGLE_BEAT_LOCK_TIME="5", SINGLE_BEAT_INITIAL_LOCK_TIME="10",
                       SINGLE_BEAT_HEARTBEAT_INTERVAL="1", SINGLE_BEAT_HOST_IDENTIFIER=name,
                       SINGLE_BEAT_LOG_LEVEL="info")
            argv = [str(Path(sys.executable).parent / "single-beat"), *celery_beat]
        else:
            raise BenchError(f"unknown system {system}")
        app = self.spawn(argv, folder / "app.log", env)
        instance = Instance(name, app, sidecar, [folder / "app.log"])
        self.instances.append(instance)
        return instance

    def lock_redis_calls(self, system: str) -> int:
        client = self.lock_clients.get(system)
        if client is None:
            return 0
        stats = client.info("commandstats")
        return sum(value["calls"] for key, value in stats.items() if key not in ("cmdstat_info",))

    def rows(self, run: str) -> list[tuple[str, datetime, datetime, str]]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute("SELECT job, tick, executed_at, executor FROM beat_effects WHERE run = %s"
                                " ORDER BY executed_at", (run,)).fetchall()

    def round(self, system: str, fault: str, index: int) -> dict[str, Any]:
        run = f"{SHORT[system]}-{fault}-{index}-{uuid.uuid4().hex[:6]}"
        instances = [self.start_instance(system, i, run, lease=run) for i in (0, 1)]
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not self.rows(run):
                if time.monotonic() > deadline:
                    raise BenchError(f"{system}: no execution within {START_TIMEOUT_S:g}s of the start")
                for instance in instances:
                    if instance.app.poll() is not None:
                        raise BenchError(f"{instance.name} exited {instance.app.returncode}: "
                                         f"{instance.logs[0].read_text(errors='replace')[-600:]}")
                time.sleep(0.1)
            steady_start, calls_before = time.time(), self.lock_redis_calls(system)
            time.sleep(STEADY_S)
            steady_end, calls_after = time.time(), self.lock_redis_calls(system)
            active_name = self.rows(run)[-1][3]
            active = next((i for i in instances if i.name == active_name), None)
            if active is None:
                raise BenchError(f"{system}: latest execution by {active_name!r}, not an instance")
            fault_at = time.time()
            if fault == "sigkill":
                active.signal(signal.SIGKILL)
            elif fault == "sigstop":
                active.signal(signal.SIGSTOP)
                time.sleep(STOP_S)
                active.signal(signal.SIGCONT)
            elif fault == "sigterm":
                active.signal(signal.SIGTERM, whole_group=False)  # what a container runtime sends its main process
            time.sleep(max(0.0, fault_at + OBSERVE_S - time.time()))
            end_at = time.time()
        finally:
            for instance in instances:
                instance.kill()
        time.sleep(0.5)  # the worker finishes what was queued
        verdict = judge(self.rows(run), fault_at - MARGIN_S, end_at - MARGIN_S, fault_at)
        verdict.update(system=system, fault=fault, round=index, run=run, active=active_name,
                       steady_s=round(steady_end - steady_start, 2))
        if system in WITH_SIDECAR:
            self.steady.append((system, steady_start, steady_end))
        elif system in REDIS_LOCKED:
            minutes = (steady_end - steady_start) / 60
            self.redis_rates[system].append((calls_after - calls_before, minutes))
        return verdict

    def close(self) -> None:
        for instance in self.instances:
            try:
                instance.kill()
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(10)
        for server in (self.postgres, self.broker, *self.lock_redis.values()):
            server.stop()


def judge(rows: list[tuple[str, datetime, datetime, str]], window_start: float, window_end: float,
          fault_at: float) -> dict[str, Any]:
    """Duplicates and missed ticks over the ticks in [window_start, window_end), per BEAT_EVERY_S
    slot; the longest time between two executions of one job from the window's start on."""
    duplicates = missed = 0
    gap_s = 0.0
    jobs = sorted({row[0] for row in rows})
    first_slot, last_slot = math.ceil(window_start / EVERY_S), math.floor(window_end / EVERY_S)
    per_job: dict[str, Any] = {}
    for job in jobs:
        slots = Counter(math.floor(row[1].timestamp() / EVERY_S + 1e-6) for row in rows if row[0] == job)
        in_window = range(first_slot, last_slot)
        job_duplicates = sum(max(0, slots[slot] - 1) for slot in in_window)
        job_missed = sum(1 for slot in in_window if slots[slot] == 0)
        executed = sorted(row[2].timestamp() for row in rows if row[0] == job)
        times = [at for at in executed if at >= window_start]
        before = [at for at in executed if at < window_start]
        if before:
            times.insert(0, before[-1])
        if times and times[-1] < window_end:
            times.append(window_end)  # a beat that never came back: the gap runs to the end
        job_gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
        duplicates, missed, gap_s = duplicates + job_duplicates, missed + job_missed, max(gap_s, job_gap)
        per_job[job] = {"duplicates": job_duplicates, "missed": job_missed, "gap_s": round(job_gap, 3)}
    if len(jobs) < JOBS:
        missed += (JOBS - len(jobs)) * max(0, last_slot - first_slot)
    return {"duplicates": duplicates, "missed": missed, "gap_s": round(gap_s, 3), "per_job": per_job,
            "executions": len(rows), "fault_at": fault_at}


def rows_from(values: dict[tuple[str, str], list[float]]) -> list[dict[str, Any]]:
    rows = []
    scenarios = [f"{name}_{fault}" for fault in FAULTS for name in SCENARIO_UNITS] + ["beat_backend_requests_per_min"]
    for scenario in scenarios:
        unit = "requests/min" if scenario == "beat_backend_requests_per_min" else SCENARIO_UNITS[
            scenario.rsplit("_", 1)[0]]
        for system in (*SYSTEMS, "celery-redbeat-default"):
            data = values.get((system, scenario))
            if not data:
                continue
            digits = 1 if unit == "requests/min" else (3 if unit == "s" else 1)
            rows.append(results.summary_row(system, scenario, unit, data, digits))
    return rows


def main() -> int:
    started = time.monotonic()
    if not localcluster.is_ready(localcluster.Paths()):
        raise SystemExit("the local cluster is not ready: run `deploy/local/cluster up` (or `make bench-beat`)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if ROUNDS < 1:
        print("bench-beat: BEAT_ROUNDS must be a whole number >= 1", file=sys.stderr)
        return 2
    unknown = sorted(set(SYSTEMS) - set(ALL_SYSTEMS))
    if unknown:
        print(f"bench-beat: BEAT_SYSTEMS must name systems among {', '.join(ALL_SYSTEMS)}, not {unknown}",
              file=sys.stderr)
        return 2
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    setup_identities()
    audit_offset = localcluster.Paths().audit_log.stat().st_size
    bench = Bench(Path(tempfile.mkdtemp(prefix="bench-beat-")))
    # The systems of one (fault, round) run side by side, each on its own lease or lock: one batch.
    batches = [[(system, fault, index) for system in SYSTEMS] for index in range(ROUNDS) for fault in FAULTS]
    if REDBEAT_DEFAULT and "celery-redbeat" in SYSTEMS:
        batches += [[("celery-redbeat-default", fault, 0) for fault in FAULTS]]
    say(f"{ROUNDS} round(s) x {len(FAULTS)} faults, {len(SYSTEMS)} systems side by side"
        f"{' + RedBeat as installed once per fault' if REDBEAT_DEFAULT else ''}; logs in {LOG_DIR}")
    try:
        bench.start_worker()
        for batch in batches:
            with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
                futures = {pool.submit(bench.round, *item): item for item in batch}
                outcomes = [(futures[future], future) for future in futures]
            for (system, fault, index), future in outcomes:
                try:
                    verdict = future.result()
                except BenchError as error:
                    bench.details["errors"].append({"system": system, "fault": fault, "round": index,
                                                    "error": str(error)})
                    say(f"{system} {fault} round {index + 1}: FAILED: {error}")
                    continue
                bench.details["rounds"].append(verdict)
                for name, key in (("beat_duplicate_ticks", "duplicates"), ("beat_missed_ticks", "missed"),
                                  ("beat_gap_s", "gap_s")):
                    bench.values[(system, f"{name}_{fault}")].append(verdict[key])
                say(f"{system} {fault} round {index + 1}: duplicates {verdict['duplicates']}, missed "
                    f"{verdict['missed']}, gap {verdict['gap_s']:.2f}s ({verdict['executions']} executions, "
                    f"active {verdict['active']})")
    finally:
        bench.close()
    time.sleep(2.5)  # the audit backend flushes about once a second
    for system, rate in apiserver_requests(audit_offset, bench.steady).items():
        bench.values[(system, "beat_backend_requests_per_min")].append(rate)
    for system, samples in bench.redis_rates.items():
        calls, minutes = sum(c for c, _ in samples), sum(m for _, m in samples)
        if minutes:
            bench.values[(system, "beat_backend_requests_per_min")].append(calls / minutes)
    rows = rows_from(bench.values)
    results_path = Path(os.environ.get("BEAT_OUT", results.RESULTS_PATH))
    results.merge_into(rows, results_path)
    bench.details.update(wall_time_s=round(time.monotonic() - started, 1), rounds_per_fault=ROUNDS, jobs=JOBS,
                         every_s=EVERY_S, steady_s=STEADY_S, observe_s=OBSERVE_S, stop_s=STOP_S,
                         finished_at=datetime.now(UTC).isoformat(timespec="seconds"))
    details_path = results_path.with_name(results_path.stem.replace("results", "beat_details") + ".json")
    details_path.write_text(json.dumps(bench.details, indent=2, default=str) + "\n")
    results.print_table(rows)
    print("\nbeat_backend_requests_per_min: apiserver requests of both sidecars (lease-sidecar-*, naive-poll) or"
          " Redis commands on the lock's Redis (celery-redbeat, single-beat); backend pooled over the steady windows")
    if bench.details["errors"]:
        print(f"{len(bench.details['errors'])} round(s) failed; see bench/beat_details.json")
    print(f"wall time {bench.details['wall_time_s']:.0f}s; wrote bench/results.json (beat_* rows), "
          "bench/beat_details.json")
    return 1 if bench.details["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
