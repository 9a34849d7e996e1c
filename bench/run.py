"""`make bench`: lease-sidecar against client-go and kubernetes-asyncio leader election.

All three run as real processes against the local control plane (deploy/local/cluster up) with
the same lease settings, and report their role on GET /leader `{"is_leader": bool}`; one harness
measures them. API requests are counted per candidate from the apiserver audit log: every
candidate has its own ServiceAccount, so `user.username` tells them apart.

Merges its rows into bench/results.json (rows {system, scenario, unit, median, min, max, runs};
the beat_* rows of `make bench-beat` stay: bench/results.py) and writes bench/results.png,
bench/machine.json and bench/details.json (every raw value). BENCH_RUNS sets the number of runs
(default 5). Everything is loopback-only, bounded in time, and every child
process is killed at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import local_api  # noqa: E402  (beside this script)
import localcluster  # noqa: E402  (stdlib-only module beside the cluster script)
import results  # noqa: E402  (beside this script)

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
WINDOW_S = float(os.environ.get("BENCH_WINDOW_S", "45"))
WAITERS = int(os.environ.get("BENCH_WAITERS", "2000"))
MAX_WALL_S = float(os.environ.get("BENCH_MAX_S", "5400"))
SEED = int(os.environ.get("BENCH_SEED", "1"))
HTTP_WINDOWS = int(os.environ.get("BENCH_HTTP_WINDOWS", "3"))
"""10-second windows at 1,000 req/s per run: one window's p99 is ~100 requests, easily one stall."""
HTTP_NICE = int(os.environ.get("BENCH_HTTP_NICE", "-10" if os.geteuid() == 0 else "0"))
"""Priority of the sidecar and its load tools in the local API scenario: ahead of the machine's
other work (the apiserver and etcd of this run, other users' builds), which would otherwise set
the tail. What still takes their CPU away is measured and reported (runqueue wait)."""
# lease-sidecar runs the way its image runs it: PYTHONOPTIMIZE=2, on BENCH_SIDECAR_PYTHON (`make
# bench` passes a Python 3.13 venv, the image's interpreter), else on this interpreter.
SIDECAR_PYTHON = os.environ.get("BENCH_SIDECAR_PYTHON") or sys.executable
SIDECAR_ENV = {**os.environ, "PYTHONOPTIMIZE": "2"}

NAMESPACE = "lease-bench"
LEASE_DURATION_S = 4
RENEW_DEADLINE_S = 3
RETRY_PERIOD_S = 1
CANDIDATES = 3
SETTLE_S = 5.0
POLL_S = 0.01
CLIENT_GO_VERSION = "v0.37.2"

SYSTEMS = ("lease-sidecar", "client-go", "kubernetes-asyncio")
SHORT = {"lease-sidecar": "ls", "client-go": "cg", "kubernetes-asyncio": "ka"}
CACHE = localcluster.CACHE_DIR / "bench"
LOG_DIR = CACHE / "logs"

SCENARIOS: dict[str, tuple[str, str]] = {
    # name: (unit, what the reader should know)
    "crash_failover_excess_s": ("s", "SIGKILL leader: time to new leader minus lease duration (lower is better)"),
    "graceful_handover_s": ("s", "SIGTERM leader: time to new leader (lower is better)"),
    "standby_api_requests_per_min": ("requests/min", "API requests per standby, steady state (lower is better)"),
    "leader_api_requests_per_min": ("requests/min", "API requests by the leader, steady state (lower is better)"),
    "startup_to_first_decision_s": ("s", "spawn to first role decision, fresh lease (lower is better)"),
    "startup_to_leader_s": ("s", "spawn to leading, single candidate, fresh lease (lower is better)"),
    "leader_rss_mib": ("MiB", "leader resident memory, steady state (lower is better)"),
    "leader_get_throughput_rps": ("requests/s", "GET /leader at saturation, sidecar on one core (higher is better)"),
    "leader_get_p99_at_1000rps_ms": ("ms", "GET /leader p99 at 1,000 req/s open loop (lower is better)"),
    "leader_get_p99_at_1000rps_with_waiters_ms": ("ms", "same, with the long-poll waiters parked (lower is better)"),
    "leader_loop_lag_p99_ms": ("ms", "event-loop lag p99 in those windows (bucket bound) (lower is better)"),
    "leader_runqueue_wait_pct": ("%", "share of those windows the sidecar waited for a CPU: the machine's other load"),
    "longpoll_rss_per_waiter_kib": ("KiB", "RSS growth per idle long-poll waiter (lower is better)"),
}


class BenchError(Exception):
    """A run that could not be measured; recorded and skipped."""


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- children


PROCESSES: list[subprocess.Popen[Any]] = []


def spawn(argv: list[str], log_path: Path, **kwargs: Any) -> subprocess.Popen[Any]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=kwargs.pop("stdout", subprocess.DEVNULL), stderr=log,
                                   stdin=kwargs.pop("stdin", subprocess.DEVNULL), cwd=ROOT, **kwargs)
    PROCESSES.append(process)
    return process


def kill_all() -> None:
    for process in PROCESSES:
        if process.poll() is None:
            process.kill()
    for process in PROCESSES:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            say(f"pid {process.pid} did not exit after SIGKILL")
    PROCESSES.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def pin(cpu: int) -> Any:
    """preexec_fn for the local API's load tools: one core (none on a one-core machine), HTTP_NICE."""
    cpus = os.sched_getaffinity(0)

    def pin_and_prioritize() -> None:
        if len(cpus) >= 2:
            os.sched_setaffinity(0, {sorted(cpus)[cpu]})
        prioritize()

    return pin_and_prioritize


def prioritize() -> None:
    """preexec_fn: HTTP_NICE for this child. With autogroup scheduling (Linux's default for
    desktops and many servers) a process's nice only ranks it within its session, so the child
    gets a session of its own and that session's group gets the nice (root only; else as is)."""
    os.setsid()
    try:
        Path("/proc/self/autogroup").write_text(f"{HTTP_NICE}\n")
    except OSError:
        pass
    try:
        os.nice(HTTP_NICE)
    except OSError:
        pass


# ---------------------------------------------------------------- candidates


@dataclass
class Candidate:
    system: str
    identity: str
    process: subprocess.Popen[Any]
    port: int
    spawned_at: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{NAMESPACE}:{self.identity}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def leader(self, timeout: float = 0.5) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/leader", timeout=timeout) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def is_leader(self) -> bool:
        body = self.leader()
        return bool(body and body.get("is_leader"))

    def resign_as_an_app_would(self) -> None:
        """lease-sidecar: what an app's SIGTERM handler does before the sidecar's own SIGTERM
        (README, "Shutdown"): give the term up, so the release need not wait for the deadline the
        app was told (sidecar/core/election.py P2). The other systems' candidates are their app."""
        if self.system != "lease-sidecar":
            return
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/leader/resign?sit_out=0", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                resp.read()
        except (OSError, urllib.error.URLError) as error:
            raise BenchError(f"{self.identity}: resign failed: {error}") from error


def identities(system: str) -> list[str]:
    return [f"{system}-{i}" for i in range(CANDIDATES)]


def kubeconfig_for(identity: str) -> Path:
    return CACHE / "kubeconfigs" / f"{identity}.kubeconfig"


def candidate_argv(system: str, identity: str, lease: str, port: int, peer_binary: Path,
                   metrics_address: str = "") -> list[str]:
    common = ["--namespace", NAMESPACE, "--lease-name", lease, "--identity", identity,
              "--kubeconfig", str(kubeconfig_for(identity)), "--http-address", f"127.0.0.1:{port}"]
    if system == "lease-sidecar":
        return [SIDECAR_PYTHON, "-m", "sidecar", "run", *common, "--metrics-address", metrics_address, "--role-dir", "",
                "--leader-lease-ttl", str(LEASE_DURATION_S), "--leader-renewal-interval", str(RETRY_PERIOD_S),
                "--leader-renew-deadline", str(RENEW_DEADLINE_S)]
    if system == "client-go":
        return [str(peer_binary), *common, "--lease-duration", f"{LEASE_DURATION_S}s",
                "--renew-deadline", f"{RENEW_DEADLINE_S}s", "--retry-period", f"{RETRY_PERIOD_S}s"]
    return [sys.executable, str(BENCH / "peers" / "k8s_asyncio_peer.py"), *common,
            "--lease-duration", str(LEASE_DURATION_S), "--renew-deadline", str(RENEW_DEADLINE_S),
            "--retry-period", str(RETRY_PERIOD_S)]


class Bench:
    def __init__(self, peer_binary: Path) -> None:
        self.peer_binary = peer_binary
        self.random = random.Random(SEED)
        self.values: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.details: dict[str, Any] = {"runs": [], "errors": [], "windows": []}
        self.nonce = format(int(time.time()), "x")

    def record(self, system: str, scenario: str, value: float) -> None:
        self.values[(system, scenario)].append(value)

    def start(self, system: str, identity: str, lease: str, metrics_address: str = "", **kwargs: Any) -> Candidate:
        port = free_port()
        log_path = LOG_DIR / f"{lease}-{identity}.log"
        spawned_at = time.monotonic()
        process = spawn(candidate_argv(system, identity, lease, port, self.peer_binary, metrics_address), log_path,
                        env=SIDECAR_ENV if system == "lease-sidecar" else None, **kwargs)
        return Candidate(system, identity, process, port, spawned_at)

    def lease_name(self, system: str, scenario: str, run: int) -> str:
        return f"{SHORT[system]}-{scenario}-{run}-{self.nonce}"

    # ------------------------------------------------------------ helpers

    @staticmethod
    def wait_one_leader(candidates: list[Candidate], timeout: float = 30.0) -> Candidate:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for candidate in candidates:
                if not candidate.alive():
                    raise BenchError(f"{candidate.identity} exited {candidate.process.returncode}")
            leading = [c for c in candidates if c.is_leader()]
            if len(leading) == 1:
                return leading[0]
            time.sleep(0.05)
        raise BenchError(f"no single leader among {[c.identity for c in candidates]} within {timeout}s")

    @staticmethod
    def wait_any_leader(candidates: list[Candidate], timeout: float,
                        exiting: Candidate | None = None) -> tuple[float, Candidate, float | None]:
        """Monotonic time at which one of `candidates` first answers is_leader, that candidate, and
        when `exiting` was first seen gone (None if it was still running then)."""
        deadline = time.monotonic() + timeout
        exited_at = None
        while time.monotonic() < deadline:
            if exiting is not None and exited_at is None and not exiting.alive():
                exited_at = time.monotonic()
            for candidate in candidates:
                if candidate.is_leader():
                    return time.monotonic(), candidate, exited_at
            time.sleep(POLL_S)
        raise BenchError(f"no new leader among {[c.identity for c in candidates]} within {timeout}s")

    @staticmethod
    def stop(candidates: list[Candidate]) -> None:
        for candidate in candidates:
            if candidate.alive():
                candidate.process.kill()
        for candidate in candidates:
            candidate.process.wait(10)

    # ------------------------------------------------------------ scenarios

    def steady_and_crash(self, system: str, run: int) -> dict[str, Any]:
        """3 candidates: a WINDOW_S steady-state window (API requests, RSS), then SIGKILL the leader."""
        lease = self.lease_name(system, "crash", run)
        candidates = [self.start(system, identity, lease) for identity in identities(system)]
        try:
            leader = self.wait_one_leader(candidates)
            time.sleep(SETTLE_S)
            window_start = time.time()
            leader_counts = Counter()
            end = time.monotonic() + WINDOW_S
            while time.monotonic() < end:  # sample the roles once a second: flaps would spoil the window
                leader_counts[len([c for c in candidates if c.is_leader()])] += 1
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            window_end = time.time()
            if leader_counts.keys() != {1} or not leader.is_leader():
                raise BenchError(f"{system}: leadership changed during the steady window: {dict(leader_counts)}")
            rss_mib = vm_rss_kib(leader.process.pid) / 1024
            standby_rss = [vm_rss_kib(c.process.pid) / 1024 for c in candidates if c is not leader]
            self.details["windows"].append({
                "system": system, "run": run, "start": window_start, "end": window_end,
                "leader": leader.username, "standbys": [c.username for c in candidates if c is not leader]})
            others = [c for c in candidates if c is not leader]
            time.sleep(self.random.uniform(0, RETRY_PERIOD_S))  # a random phase against the renewals
            killed_at = time.monotonic()
            leader.process.send_signal(signal.SIGKILL)
            new_at, new_leader, _ = self.wait_any_leader(others, timeout=LEASE_DURATION_S * 5)
            failover = new_at - killed_at
            self.record(system, "leader_rss_mib", rss_mib)
            self.record(system, "crash_failover_excess_s", failover - LEASE_DURATION_S)
            return {"leader": leader.identity, "new_leader": new_leader.identity, "failover_s": failover,
                    "leader_rss_mib": rss_mib, "standby_rss_mib": standby_rss}
        finally:
            self.stop(candidates)

    def graceful(self, system: str, run: int) -> dict[str, Any]:
        lease = self.lease_name(system, "term", run)
        candidates = [self.start(system, identity, lease) for identity in identities(system)]
        try:
            leader = self.wait_one_leader(candidates)
            time.sleep(SETTLE_S)
            others = [c for c in candidates if c is not leader]
            time.sleep(self.random.uniform(0, RETRY_PERIOD_S))  # a random phase against the renewals
            termed_at = time.monotonic()
            leader.resign_as_an_app_would()
            leader.process.send_signal(signal.SIGTERM)
            new_at, new_leader, exited_at = self.wait_any_leader(others, timeout=LEASE_DURATION_S * 5,
                                                                 exiting=leader)
            if exited_at is None:
                try:
                    leader.process.wait(15)
                    exited_at = time.monotonic()
                except subprocess.TimeoutExpired:
                    pass
            exited_s = None if exited_at is None else exited_at - termed_at
            self.record(system, "graceful_handover_s", new_at - termed_at)
            return {"leader": leader.identity, "new_leader": new_leader.identity, "handover_s": new_at - termed_at,
                    "old_leader_exit_s": exited_s, "old_leader_exit_code": leader.process.returncode}
        finally:
            self.stop(candidates)

    def startup(self, system: str, run: int) -> dict[str, Any]:
        lease = self.lease_name(system, "start", run)
        candidate = self.start(system, identities(system)[0], lease)
        try:
            deadline = candidate.spawned_at + 30
            decided: tuple[float, str] | None = None
            while time.monotonic() < deadline:
                if not candidate.alive():
                    raise BenchError(f"{candidate.identity} exited {candidate.process.returncode}")
                body = candidate.leader(timeout=0.2)
                now = time.monotonic() - candidate.spawned_at
                if body and decided is None and body.get("role") not in (None, "unknown"):
                    decided = (now, body["role"])
                if body and body.get("is_leader"):
                    assert decided is not None
                    self.record(system, "startup_to_first_decision_s", decided[0])
                    self.record(system, "startup_to_leader_s", now)
                    return {"first_decision_s": decided[0], "first_role": decided[1], "leader_s": now}
                time.sleep(0.005)
            raise BenchError(f"{system}: not leading within 30s of spawn")
        finally:
            self.stop([candidate])

    def sidecar_http(self, run: int) -> dict[str, Any]:
        """lease-sidecar only: GET /leader throughput, open-loop p99, and idle long-poll waiters."""
        system = "lease-sidecar"
        sidecar, url, metrics_url = self.start_http_sidecar(self.lease_name(system, "http", run))
        out: dict[str, Any] = {}
        try:
            out["throughput"] = throughput(url)
            self.record(system, "leader_get_throughput_rps", out["throughput"]["rps"])
            time.sleep(1.0)

            out["openloop_windows"] = [self.openloop_window(sidecar, url, metrics_url) for _ in range(HTTP_WINDOWS)]
            out["openloop"] = max(out["openloop_windows"], key=lambda window: window["p99_ms"])

            body = sidecar.leader()
            if not body or "version" not in body:
                raise BenchError("lease-sidecar /leader has no version")
            out["waiters"] = self.waiters(sidecar, f"{url}?wait=60&since={body['version']}")
            if out["waiters"]["per_waiter_kib"] is not None:
                self.record(system, "longpoll_rss_per_waiter_kib", out["waiters"]["per_waiter_kib"])
            if out["waiters"]["openloop"] is not None:
                self.record(system, "leader_get_p99_at_1000rps_with_waiters_ms",
                            out["waiters"]["openloop"]["p99_ms"])
            return out
        finally:
            self.stop([sidecar])

    def start_http_sidecar(self, lease: str) -> tuple[Candidate, str, str]:
        """One leading sidecar with metrics on, pinned to the first core at HTTP_NICE: (it, /leader, /metrics)."""
        metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        sidecar = self.start("lease-sidecar", identities("lease-sidecar")[0], lease, metrics_url.split("/")[2],
                             preexec_fn=prioritize)
        try:
            self.wait_one_leader([sidecar])
        except BenchError:
            self.stop([sidecar])
            raise
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            os.sched_setaffinity(sidecar.process.pid, {cpus[0]})
        time.sleep(2.0)
        return sidecar, f"http://127.0.0.1:{sidecar.port}/leader", metrics_url

    def openloop_window(self, sidecar: Candidate, url: str, metrics_url: str) -> dict[str, Any]:
        """10 s at 1,000 req/s, with what explains its tail (bench/local_api.py)."""
        try:
            before = local_api.Observation(metrics_url, sidecar.process.pid)
            result = loadgen(["openloop", url, "--rate", "1000", "--duration", "10", "--connections", "32"],
                             timeout=60)
            check_openloop(result)
            result.update(local_api.explain(before, local_api.Observation(metrics_url, sidecar.process.pid), result))
        except local_api.ScrapeError as error:
            raise BenchError(str(error)) from None
        self.record("lease-sidecar", "leader_get_p99_at_1000rps_ms", result["p99_ms"])
        if result["loop_lag"]["p99_le_ms"] is not None:
            self.record("lease-sidecar", "leader_loop_lag_p99_ms", result["loop_lag"]["p99_le_ms"])
        self.record("lease-sidecar", "leader_runqueue_wait_pct",
                    100 * result["sidecar_runqueue_wait_ms"] / (result["wall_s"] * 1000))
        return result

    def waiters(self, sidecar: Candidate, url: str) -> dict[str, Any]:
        pid = sidecar.process.pid
        before_kib = vm_rss_kib(pid)
        process = spawn([sys.executable, str(BENCH / "loadgen.py"), "waiters", url, "--count", str(WAITERS),
                         "--hold", "60"], LOG_DIR / "loadgen-waiters.log", stdout=subprocess.PIPE,
                        stdin=subprocess.PIPE, preexec_fn=pin(1))
        result: dict[str, Any] = {"rss_before_kib": before_kib, "per_waiter_kib": None, "openloop": None}
        try:
            ready = read_json_line(process, timeout=60)
            result["ready"] = ready
            opened = int(ready.get("ready", 0))
            time.sleep(3.0)  # let the sidecar parse every request and park its handler
            samples = [vm_rss_kib(pid)]
            for _ in range(4):
                time.sleep(0.5)
                samples.append(vm_rss_kib(pid))
            result["rss_with_waiters_kib"] = max(samples)
            if opened:
                result["per_waiter_kib"] = (max(samples) - before_kib) / opened
            openloop = loadgen(["openloop", url.split("?")[0], "--rate", "1000", "--duration", "5",
                                "--connections", "32"], timeout=60)
            check_openloop(openloop)
            result["openloop"] = openloop
            assert process.stdin is not None
            process.stdin.close()
            result["final"] = read_json_line(process, timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        return result


# ---------------------------------------------------------------- load tools


def read_json_line(process: subprocess.Popen[Any], timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise BenchError(f"no output from pid {process.pid} within {timeout}s")
    line = process.stdout.readline()
    if not line:
        raise BenchError(f"pid {process.pid} exited {process.wait(5)} without output")
    return json.loads(line)


def loadgen(args: list[str], timeout: float) -> dict[str, Any]:
    process = spawn([sys.executable, str(BENCH / "loadgen.py"), *args], LOG_DIR / "loadgen.log",
                    stdout=subprocess.PIPE, preexec_fn=pin(1))
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise BenchError(f"loadgen {args[0]} did not finish within {timeout}s") from None
    if process.returncode != 0:
        raise BenchError(f"loadgen {args[0]} exited {process.returncode}; see {LOG_DIR / 'loadgen.log'}")
    return json.loads(stdout.strip().splitlines()[-1])


def check_openloop(result: dict[str, Any]) -> None:
    if result["errors"] or not result["finished_in_time"] or result["completed"] < result["scheduled"]:
        raise BenchError(f"open-loop run incomplete: {result}")


def throughput(url: str) -> dict[str, Any]:
    """Requests/s at saturation: wrk (one thread, 32 connections, 8 s) on the other core, else loadgen."""
    wrk = shutil.which("wrk")
    if wrk is None:
        result = loadgen(["closed", url, "--connections", "32", "--duration", "8"], timeout=60)
        return {"tool": "loadgen closed loop", "rps": result["rps"], "raw": result}
    process = spawn([wrk, "-t1", "-c32", "-d8s", "--latency", url], LOG_DIR / "wrk.log", stdout=subprocess.PIPE,
                    preexec_fn=pin(1))
    try:
        stdout, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise BenchError("wrk did not finish within 60s") from None
    text = stdout.decode()
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if process.returncode != 0 or match is None:
        raise BenchError(f"wrk failed ({process.returncode}): {text[-500:]}")
    if "Non-2xx" in text or "Socket errors" in text:
        raise BenchError(f"wrk saw errors: {text[-500:]}")
    return {"tool": "wrk -t1 -c32 -d8s", "rps": float(match.group(1)), "raw": text}


# ---------------------------------------------------------------- setup


def kubectl(*args: str, stdin: str | None = None) -> str:
    binary = localcluster.TOOLS["kubectl"].cache_path()
    result = subprocess.run([str(binary), "--kubeconfig", str(localcluster.Paths().kubeconfig), *args],
                            input=stdin, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args[:3])} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def setup_identities(extra: list[str] | None = None) -> None:
    """A ServiceAccount per candidate, one Role on leases, a token kubeconfig each."""
    names = [identity for system in SYSTEMS for identity in identities(system)] + (extra or [])
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "lease-bench-candidate", "namespace": NAMESPACE},
         "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                    "verbs": ["get", "list", "watch", "create", "update", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "lease-bench-candidates", "namespace": NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease-bench-candidate"},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE} for name in names]},
    ]
    items[1:1] = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}}
                  for name in names]
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    kubectl("delete", "leases", "--all", "-n", NAMESPACE, "--wait=false")
    ca = localcluster.Paths().pki / "ca.crt"
    (CACHE / "kubeconfigs").mkdir(parents=True, exist_ok=True)
    for name in names:
        token = kubectl("create", "token", name, "-n", NAMESPACE, "--duration", "3h").strip()
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": f"https://127.0.0.1:{localcluster.APISERVER_PORT}",
                                                       "certificate-authority": str(ca)}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": name, "namespace": NAMESPACE}}],
            "current-context": "local",
        }
        path = kubeconfig_for(name)
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)


def build_client_go_peer() -> Path:
    source = BENCH / "peers" / "clientgo"
    digest = hashlib.sha256()
    for path in [source / "go.mod", source / "go.sum", *sorted(source.glob("*.go"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    target = CACHE / f"clientgo-peer-{digest.hexdigest()[:12]}" / "clientgo-peer"
    if target.exists():
        return target
    if shutil.which("go") is None:
        raise SystemExit("Go is not installed: `go` is needed to build the client-go peer")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    say(f"building the client-go peer into {target.parent}")
    result = subprocess.run(["go", "build", "-trimpath", "-o", str(partial), "."], cwd=source,
                            capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise SystemExit(f"go build failed: {result.stderr[-2000:]}")
    partial.rename(target)
    return target


def compile_for_the_sidecar() -> None:
    """Bytecode for PYTHONOPTIMIZE=2, as the image has it: without it every start compiles from source
    (and with PYTHONDONTWRITEBYTECODE set, every start), which costs seconds and tens of MiB."""
    purelib = subprocess.run([SIDECAR_PYTHON, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    subprocess.run([SIDECAR_PYTHON, "-m", "compileall", "-q", "-o", "2", purelib, str(ROOT / "sidecar")],
                   stdout=subprocess.DEVNULL, check=False, timeout=1200)


def command_output(*argv: str, any_exit: bool = False) -> str | None:
    """First line of a version command's output (`wrk --version` prints it and exits 1)."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0].strip() if lines and (result.returncode == 0 or any_exit) else None


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    from importlib.metadata import version

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except Exception:
            return None

    return {
        "nproc": os.cpu_count(), "cpu_model": model, "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(), "python": platform.python_version(), "go": command_output("go", "version"),
        "lease_sidecar_python": command_output(SIDECAR_PYTHON, "--version"), "lease_sidecar_env": "PYTHONOPTIMIZE=2",
        "load_average_at_start": os.getloadavg(),
        "wrk": command_output("wrk", "--version", any_exit=True) if shutil.which("wrk") else None,
        "kube_apiserver": localcluster.KUBE_VERSION, "client_go": CLIENT_GO_VERSION,
        "kubernetes_asyncio": pkg("kubernetes_asyncio"), "aiohttp": pkg("aiohttp"),
        "lease_sidecar": pkg("lease-sidecar"),
        "settings": {"lease_duration_s": LEASE_DURATION_S, "renew_deadline_s": RENEW_DEADLINE_S,
                     "retry_period_s": RETRY_PERIOD_S, "candidates": CANDIDATES, "steady_window_s": WINDOW_S,
                     "settle_s": SETTLE_S, "poll_interval_s": POLL_S, "waiters": WAITERS, "runs": RUNS,
                     "http_windows": HTTP_WINDOWS, "http_nice": HTTP_NICE,
                     "seed": SEED},
    }


# ---------------------------------------------------------------- audit log


def count_requests(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests each user began inside each window: one per auditID, at ResponseStarted (watches)
    or ResponseComplete (everything else), timed by requestReceivedTimestamp."""
    users = {user for window in windows for user in [window["leader"], *window["standbys"]]}
    seen: dict[str, tuple[str, float, str]] = {}
    with open(localcluster.Paths().audit_log, encoding="utf-8", errors="replace") as log:
        for line in log:
            if "serviceaccount:" + NAMESPACE not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("stage") not in ("ResponseStarted", "ResponseComplete"):
                continue
            user = (event.get("user") or {}).get("username")
            if user not in users or event["auditID"] in seen:
                continue
            received = datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            seen[event["auditID"]] = (user, received, event.get("verb", "?"))
    out: dict[str, Any] = {"per_window": [], "verbs": defaultdict(Counter)}
    for window in windows:
        start, end = window["start"], window["end"]
        minutes = (end - start) / 60
        counts: Counter[str] = Counter()
        for user, received, verb in seen.values():
            if start <= received < end:
                counts[user] += 1
                role = "leader" if user == window["leader"] else "standby"
                if user == window["leader"] or user in window["standbys"]:
                    out["verbs"][f"{window['system']} {role}"][verb] += 1
        leader_rate = counts[window["leader"]] / minutes
        standby_rates = [counts[user] / minutes for user in window["standbys"]]
        out["per_window"].append({"system": window["system"], "run": window["run"], "leader_per_min": leader_rate,
                                  "standby_per_min": standby_rates, "minutes": minutes})
    # All windows of a system together: the steadier estimate when requests come in rare bursts.
    pooled: dict[str, dict[str, float]] = {}
    for system in SYSTEMS:
        mine = [w for w in out["per_window"] if w["system"] == system]
        minutes = sum(w["minutes"] for w in mine)
        if minutes:
            pooled[system] = {
                "leader_per_min": round(sum(w["leader_per_min"] * w["minutes"] for w in mine) / minutes, 2),
                "standby_per_min": round(sum(statistics.mean(w["standby_per_min"]) * w["minutes"]
                                             for w in mine) / minutes, 2)}
    out["pooled"] = pooled
    out["verbs"] = {key: dict(value) for key, value in out["verbs"].items()}
    return out


# ---------------------------------------------------------------- output


def rows_from(values: dict[tuple[str, str], list[float]]) -> list[dict[str, Any]]:
    rows = []
    for scenario, (unit, _) in SCENARIOS.items():
        for system in SYSTEMS:
            data = values.get((system, scenario))
            if not data:
                continue
            digits = 1 if unit in ("requests/s", "requests/min", "MiB", "KiB") else 3
            rows.append(results.summary_row(system, scenario, unit, data, digits))
    return rows


def plot(rows: list[dict[str, Any]], machine: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"lease-sidecar": "#1f77b4", "client-go": "#2ca02c", "kubernetes-asyncio": "#ff7f0e"}
    scenarios = [name for name in SCENARIOS if any(row["scenario"] == name for row in rows)]
    cols = 4
    nrows = max(1, -(-len(scenarios) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.6 * nrows), squeeze=False)
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        unit, caption = SCENARIOS[scenario]
        data = [row for row in rows if row["scenario"] == scenario]
        xs = range(len(data))
        medians = [row["median"] for row in data]
        errors = [[row["median"] - row["min"] for row in data], [row["max"] - row["median"] for row in data]]
        ax.bar(xs, medians, width=0.6, yerr=errors, capsize=4, color=[colors[row["system"]] for row in data])
        if len(data) == 1:
            ax.set_xlim(-1.5, 1.5)
        ax.set_xticks(list(xs), [row["system"].replace("kubernetes-", "k8s-") for row in data], fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(scenario, fontsize=9, fontweight="bold")
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.text(0.5, -0.2, caption, transform=ax.transAxes, ha="center", va="top", fontsize=7, wrap=True)
        for x, row in zip(xs, data, strict=True):
            below = row["median"] < 0
            ax.annotate(f"{row['median']:g}", (x, row["median"]), textcoords="offset points",
                        xytext=(-22 if below else 8, -10 if below else 3), fontsize=7)
    for ax in list(axes.flat)[len(scenarios):]:
        ax.axis("off")
    settings = machine["settings"]
    fig.suptitle(f"lease-sidecar vs client-go vs kubernetes-asyncio: median of {settings['runs']} runs, "
                 f"bars min to max; lease {settings['lease_duration_s']}s / renew deadline "
                 f"{settings['renew_deadline_s']}s / retry {settings['retry_period_s']}s; "
                 f"{machine['nproc']} cores, {machine['cpu_model']}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96), h_pad=3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def main() -> int:
    started = time.monotonic()
    if not localcluster.is_ready(localcluster.Paths()):
        raise SystemExit("the local cluster is not ready: run `deploy/local/cluster up` (or `make bench`)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if LOG_DIR.exists():
        shutil.rmtree(LOG_DIR)
    LOG_DIR.mkdir(parents=True)
    machine = machine_info()
    machine["started_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    peer = build_client_go_peer()
    compile_for_the_sidecar()
    setup_identities()
    bench = Bench(peer)
    say(f"{RUNS} runs, {WINDOW_S:.0f}s steady windows; logs in {LOG_DIR}")
    try:
        for run in range(RUNS):
            for system in SYSTEMS:
                for scenario in (bench.steady_and_crash, bench.graceful, bench.startup):
                    if time.monotonic() - started > MAX_WALL_S:
                        raise SystemExit(f"bench exceeded BENCH_MAX_S={MAX_WALL_S:.0f}s")
                    try:
                        detail = scenario(system, run)
                        bench.details["runs"].append({"system": system, "scenario": scenario.__name__, "run": run,
                                                      **detail})
                        say(f"run {run + 1}/{RUNS} {system} {scenario.__name__}: "
                            f"{json.dumps({k: v for k, v in detail.items() if not isinstance(v, dict)})}")
                    except BenchError as error:
                        bench.details["errors"].append({"system": system, "scenario": scenario.__name__,
                                                        "run": run, "error": str(error)})
                        say(f"run {run + 1}/{RUNS} {system} {scenario.__name__} FAILED: {error}")
            try:
                detail = bench.sidecar_http(run)
                bench.details["runs"].append({"system": "lease-sidecar", "scenario": "sidecar_http", "run": run,
                                              **detail})
                say(f"run {run + 1}/{RUNS} lease-sidecar http: {detail['throughput']['rps']:.0f} req/s, "
                    f"p99 {[round(w['p99_ms'], 2) for w in detail['openloop_windows']]} ms (runqueue wait "
                    f"{[round(w['sidecar_runqueue_wait_ms']) for w in detail['openloop_windows']]} ms; loop lag >2 ms"
                    f" {[w['loop_lag']['over_2ms'] for w in detail['openloop_windows']]}), "
                    f"waiters {detail['waiters'].get('per_waiter_kib')} KiB each")
            except BenchError as error:
                bench.details["errors"].append({"system": "lease-sidecar", "scenario": "sidecar_http", "run": run,
                                                "error": str(error)})
                say(f"run {run + 1}/{RUNS} lease-sidecar http FAILED: {error}")
    finally:
        kill_all()

    time.sleep(2.5)  # the audit backend flushes about once a second
    audit = count_requests(bench.details["windows"])
    bench.details["audit"] = audit
    for window in audit["per_window"]:
        bench.record(window["system"], "leader_api_requests_per_min", window["leader_per_min"])
        bench.record(window["system"], "standby_api_requests_per_min", statistics.mean(window["standby_per_min"]))

    rows = rows_from(bench.values)
    import fence  # bench/fence.py: the storage fence's cost per write, the tick ledger's claims per second

    rows += fence.measure(RUNS)
    import locks  # bench/locks.py: keyed locks' acquire / release latency, apiserver writes per lock-minute

    rows += locks.measure(RUNS)
    machine["wall_time_s"] = round(time.monotonic() - started, 1)
    results.merge_into(rows)  # the beat_* rows of make bench-beat stay
    (BENCH / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    (BENCH / "details.json").write_text(json.dumps(bench.details, indent=2, default=str) + "\n")
    plot(rows, machine, BENCH / "results.png")
    results.print_table(rows)
    print(f"\nAPI requests per minute, all windows pooled: {json.dumps(audit['pooled'])}")
    print(f"API verbs per role (all windows): {json.dumps(audit['verbs'])}")
    if bench.details["errors"]:
        print(f"{len(bench.details['errors'])} run(s) failed; see bench/details.json")
    print(f"wall time {machine['wall_time_s']:.0f}s; wrote bench/results.json, bench/results.png, "
          "bench/machine.json, bench/details.json")
    return 1 if bench.details["errors"] else 0


# ---------------------------------------------------------------- hand-over with 30 candidates


HANDOVER_CANDIDATES = int(os.environ.get("BENCH_HANDOVER_CANDIDATES", "30"))
HANDOVER_ROUNDS = int(os.environ.get("BENCH_HANDOVER_ROUNDS", "5"))


def handover_identities() -> list[str]:
    return [f"lease-sidecar-h{i}" for i in range(HANDOVER_CANDIDATES)]


def handover_argv(identity: str, lease: str, port: int, members: bool) -> list[str]:
    argv = candidate_argv("lease-sidecar", identity, lease, port, Path())
    return [*argv, "--members"] if members else argv


def lease_writes(lease: str, start: float, end: float) -> list[dict[str, Any]]:
    """Writes (create, update) to the Lease `lease` received in [start, end): user, verb, HTTP code."""
    writes = []
    with open(localcluster.Paths().audit_log, encoding="utf-8", errors="replace") as log:
        for line in log:
            if f'"name":"{lease}"' not in line or '"stage":"ResponseComplete"' not in line:
                continue
            event = json.loads(line)
            if event.get("verb") not in ("create", "update") or (event.get("objectRef") or {}).get("name") != lease:
                continue
            received = datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            if start <= received < end:
                writes.append({"user": event["user"]["username"].rsplit(":", 1)[-1], "verb": event["verb"],
                               "code": (event.get("responseStatus") or {}).get("code"), "at": received})
    return sorted(writes, key=lambda w: w["at"])


def handover_run(members: bool) -> dict[str, Any]:
    """HANDOVER_CANDIDATES sidecars on one Lease; HANDOVER_ROUNDS times: SIGTERM the leader, time the
    next leader, and count the Lease writes of the hand-over from the audit log (the release, the
    acquisitions, the 409s). The stopped candidate is started again, so the count stays constant.
    `members`: with --members, the leader names a successor; without, the release is open to all."""
    lease = f"ls-handover{'-m' if members else ''}-{format(int(time.time()), 'x')}"
    names = handover_identities()
    bench = Bench(Path())
    candidates: dict[str, Candidate] = {}

    def start(identity: str) -> Candidate:
        port = free_port()
        process = spawn(handover_argv(identity, lease, port, members), LOG_DIR / f"{lease}-{identity}.log")
        candidates[identity] = Candidate("lease-sidecar", identity, process, port, time.monotonic())
        return candidates[identity]

    def members_alive(candidate: Candidate) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{candidate.port}/members", timeout=2) as resp:
                return sum(1 for m in json.loads(resp.read())["members"] if m["alive"])
        except (OSError, ValueError, KeyError):
            return 0

    rounds = []
    try:
        for identity in names:
            start(identity)
        for _ in range(HANDOVER_ROUNDS):
            leader = bench.wait_one_leader(list(candidates.values()), timeout=60)
            if members:
                deadline = time.monotonic() + 30
                while members_alive(leader) < HANDOVER_CANDIDATES and time.monotonic() < deadline:
                    time.sleep(0.2)
            time.sleep(SETTLE_S)
            others = [c for c in candidates.values() if c is not leader]
            wall_start, termed_at = time.time(), time.monotonic()
            leader.resign_as_an_app_would()
            leader.process.send_signal(signal.SIGTERM)
            new_at, new_leader, _ = bench.wait_any_leader(others, timeout=LEASE_DURATION_S * 5)
            wall_end = time.time() + 0.5  # before the new leader's first renewal (1 s)
            leader.process.wait(15)
            time.sleep(1.0)
            rounds.append({"from": leader.identity, "to": new_leader.identity, "handover_s": new_at - termed_at,
                           "window": (wall_start - 0.05, wall_end)})
            start(leader.identity)
            time.sleep(1.0)
    finally:
        for candidate in candidates.values():
            if candidate.alive():
                candidate.process.kill()
        for candidate in candidates.values():
            candidate.process.wait(10)
    time.sleep(2.5)  # the audit backend flushes about once a second
    for row in rounds:
        window = row.pop("window")
        writes = lease_writes(lease, *window)
        ok = [w for w in writes if w["code"] in (200, 201)]
        release = next((w for w in ok if w["user"] == row["from"]), None)
        acquired = next((w for w in ok if w["user"] == row["to"]), None)
        # Server-side times (requestReceivedTimestamp): not limited by polling 29 local APIs.
        if release and acquired:
            row["release_to_acquired_ms"] = round((acquired["at"] - release["at"]) * 1000, 1)
            row["sigterm_to_acquired_ms"] = round((acquired["at"] - window[0] - 0.05) * 1000, 1)
        row["conflicts_409"] = sum(1 for w in writes if w["code"] == 409)
        # The window may also catch the new leader's first renewal: count writers, not writes.
        row["acquisitions"] = len({w["user"] for w in ok if w["user"] != row["from"]})
        row["third_party_writes"] = sum(1 for w in writes if w["user"] not in (row["from"], row["to"]))
        row["writers"] = sorted({w["user"] for w in writes if w["user"] != row["from"]})
    return {"members": members, "candidates": HANDOVER_CANDIDATES, "lease": lease, "rounds": rounds}


def handover_main() -> int:
    """`bench/run.py --handover`: the 30-candidate hand-over, without and with a named successor."""
    if not localcluster.is_ready(localcluster.Paths()):
        raise SystemExit("the local cluster is not ready: run `deploy/local/cluster up`")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    setup_identities(extra=handover_identities())
    results = []
    try:
        for members in (False, True):
            result = handover_run(members)
            results.append(result)
            for row in result["rounds"]:
                say(f"{'named successor' if members else 'open release  '}: {row['from']} -> {row['to']} in "
                    f"{row['handover_s'] * 1000:.0f} ms (server: SIGTERM to acquisition "
                    f"{row.get('sigterm_to_acquired_ms')} ms, release to acquisition "
                    f"{row.get('release_to_acquired_ms')} ms); {row['acquisitions']} acquisition(s), "
                    f"{row['conflicts_409']} x 409 from {len(row['writers'])} writer(s)")
    finally:
        kill_all()
    (BENCH / "handover.json").write_text(json.dumps(results, indent=2) + "\n")
    for result in results:
        rows = result["rounds"]
        mode = "named successor (--members)" if result["members"] else "open release"
        times_ms = [r["handover_s"] * 1000 for r in rows]
        server_ms = [r["release_to_acquired_ms"] for r in rows if "release_to_acquired_ms" in r]
        print(f"{result['candidates']} candidates, {mode}: hand-over median {statistics.median(times_ms):.0f} ms "
              f"[{min(times_ms):.0f}, {max(times_ms):.0f}] (polled), release to acquisition on the server "
              f"median {statistics.median(server_ms) if server_ms else float('nan'):.0f} ms, "
              f"409s per hand-over {[r['conflicts_409'] for r in rows]}, "
              f"acquiring candidates per hand-over {[r['acquisitions'] for r in rows]}, "
              f"writes by third candidates {[r['third_party_writes'] for r in rows]}")
    print("wrote bench/handover.json")
    return 0


# ---------------------------------------------------------------- the local API alone


API_WINDOWS = int(os.environ.get("BENCH_API_WINDOWS", "12"))
"""Windows of `make bench-api` (10 s at 1,000 req/s each, one sidecar): its p99 is reported per window."""


def local_api_main() -> int:
    """`bench/run.py --local-api` (`make bench-api`): GET /leader at 1,000 req/s for API_WINDOWS
    windows, each printed with what explains its tail; writes bench/local_api.json."""
    if not localcluster.is_ready(localcluster.Paths()):
        raise SystemExit("the local cluster is not ready: run `deploy/local/cluster up`")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    compile_for_the_sidecar()
    setup_identities()
    bench = Bench(Path())
    machine = {**machine_info(), "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    sidecar, url, metrics_url = bench.start_http_sidecar(bench.lease_name("lease-sidecar", "api", 0))
    windows = []
    try:
        for index in range(API_WINDOWS):
            windows.append(bench.openloop_window(sidecar, url, metrics_url))
            say(local_api.line(index, windows[-1]))
    finally:
        bench.stop([sidecar])
        kill_all()
    result = {"summary": local_api.summary(windows), "machine": machine, "windows": windows}
    (BENCH / "local_api.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = result["summary"]
    print(f"GET /leader p99 at 1,000 req/s over {summary['windows']} windows of 10 s: median "
          f"{summary['p99_median_ms']:.2f} ms [{summary['p99_min_ms']:.2f}, {summary['p99_max_ms']:.2f}]; "
          f"{summary['under_goal']} of {summary['windows']} under {summary['goal_ms']:.0f} ms. "
          "Wrote bench/local_api.json")
    return 0


def replot() -> None:
    """`bench/run.py --replot`: redraw results.png from results.json and machine.json (no measuring)."""
    rows = json.loads((BENCH / "results.json").read_text())
    plot(rows, json.loads((BENCH / "machine.json").read_text()), BENCH / "results.png")
    results.print_table(rows)


if __name__ == "__main__":
    if sys.argv[1:] == ["--replot"]:
        sys.exit(replot())
    if sys.argv[1:] == ["--local-api"]:
        try:
            sys.exit(local_api_main())
        finally:
            kill_all()
    if sys.argv[1:] == ["--fence"]:
        import fence

        sys.exit(fence.main())
    if sys.argv[1:] == ["--handover"]:
        try:
            sys.exit(handover_main())
        finally:
            kill_all()
    try:
        sys.exit(main())
    finally:
        kill_all()
