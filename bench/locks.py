"""Keyed locks' cost (`--locks`): acquire and release latency through the local API, and apiserver
writes per lock-minute, beside the election's own figures in bench/results.json.

Each run starts one sidecar with --locks (admin kubeconfig, namespace NAMESPACE, --lock-max-ttl
LOCK_MAX_TTL_S) and measures, after its lock watch is --lock-max-ttl old (rule K3: new keys are
then taken at once):
- acquire_new_key_ms: POST of a key never seen (one create), median of OPS keys;
- acquire_ms / release_ms: POST and DELETE of a key whose Lease exists, released (one update each);
- lock_writes_per_lock_minute: one key held for WINDOW_S seconds (renewed by PUT every second, no
  API call), then released; the sidecar's own count of create/update/delete calls on lock Leases
  (lease_sidecar_lock_api_requests_total), acquire and release included, per minute held.

    python bench/locks.py            # BENCH_RUNS runs (5); merges its rows into bench/results.json
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import results  # bench/results.py, beside this script

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy" / "local"))

SYSTEM = "lease-sidecar locks"
NAMESPACE = os.environ.get("BENCH_LOCK_NAMESPACE", "lease-bench-locks")
LOCK_MAX_TTL_S = int(os.environ.get("BENCH_LOCK_MAX_TTL_S", "30"))
OPS = int(os.environ.get("BENCH_LOCK_OPS", "50"))
WINDOW_S = float(os.environ.get("BENCH_LOCK_WINDOW_S", "60"))
SIDECAR_PYTHON = os.environ.get("BENCH_SIDECAR_PYTHON") or sys.executable

SCENARIOS: dict[str, tuple[str, str]] = {
    "acquire_new_key_ms": ("ms", "POST /locks/{new key}: one create (lower is better)"),
    "acquire_ms": ("ms", "POST /locks/{released key}: one update (lower is better)"),
    "release_ms": ("ms", "DELETE /locks/{key}: one update, answered once written (lower is better)"),
    "lock_writes_per_lock_minute": ("writes/min", "apiserver writes per minute a lock is held, acquire and "
                                                  f"release included, --lock-max-ttl {LOCK_MAX_TTL_S}s"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(url: str, method: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method=method, data=b"" if method in ("POST", "PUT") else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def lock_writes(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(r'^lease_sidecar_lock_api_requests_total\{[^}]*verb="(create|update|delete)"[^}]*\} (\S+)$',
                         re.MULTILINE)
    return int(sum(float(value) for _, value in pattern.findall(text)))


def timed(url: str, method: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    status, body = call(url, method)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if status != 200:
        raise RuntimeError(f"{method} {url}: {status} {body}")
    return elapsed_ms, body


def one_run(kubeconfig: Path, log_path: Path) -> dict[str, float]:
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    lease = f"bench-locks-{uuid.uuid4().hex[:8]}"
    argv = [SIDECAR_PYTHON, "-m", "sidecar", "run", "--lease-name", lease, "--namespace", NAMESPACE,
            "--identity", "bench-0", "--kubeconfig", str(kubeconfig), "--http-address", f"127.0.0.1:{port}",
            "--metrics-address", f"127.0.0.1:{metrics_port}", "--role-dir", "", "--locks",
            "--lock-max-ttl", str(LOCK_MAX_TTL_S), "--lock-rate", "1000"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                                   env={**os.environ, "PYTHONOPTIMIZE": "2"})
    try:
        deadline = time.monotonic() + 120  # a loaded machine imports slowly
        while True:
            try:
                if call(f"{base}/readyz", "GET", 1)[0] in (200, 503):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"sidecar did not start; see {log_path}")
            time.sleep(0.1)
        time.sleep(LOCK_MAX_TTL_S + 1)  # K3: the lock watch is --lock-max-ttl old
        new_key, existing, release = [], [], []
        for n in range(OPS):
            elapsed, held = timed(f"{base}/locks/new-{n}", "POST")
            new_key.append(elapsed)
            timed(f"{base}/locks/new-{n}?owner={held['owner']}", "DELETE")
        for _ in range(OPS):
            elapsed, held = timed(f"{base}/locks/again", "POST")
            existing.append(elapsed)
            elapsed, _ = timed(f"{base}/locks/again?owner={held['owner']}", "DELETE")
            release.append(elapsed)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        before = lock_writes(metrics_url)
        started = time.monotonic()
        _, held = timed(f"{base}/locks/held-a-minute?ttl=5", "POST")
        while time.monotonic() - started < WINDOW_S:
            time.sleep(1)
            timed(f"{base}/locks/held-a-minute?owner={held['owner']}", "PUT")
        timed(f"{base}/locks/held-a-minute?owner={held['owner']}", "DELETE")
        writes = lock_writes(metrics_url) - before
        return {"acquire_new_key_ms": statistics.median(new_key), "acquire_ms": statistics.median(existing),
                "release_ms": statistics.median(release),
                "lock_writes_per_lock_minute": writes * 60 / (time.monotonic() - started)}
    finally:
        process.terminate()
        process.wait(60)


def measure(runs: int) -> list[dict[str, Any]]:
    import localcluster

    kubeconfig = localcluster.Paths().kubeconfig
    subprocess.run([str(localcluster.TOOLS["kubectl"].cache_path()), "--kubeconfig", str(kubeconfig),
                    "create", "namespace", NAMESPACE], capture_output=True, check=False)
    logs = localcluster.CACHE_DIR / "bench" / "logs"  # beside bench/run.py's logs
    logs.mkdir(parents=True, exist_ok=True)
    values: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    for run in range(runs):
        result = one_run(kubeconfig, logs / f"locks-{run}.log")
        for name, value in result.items():
            values[name].append(value)
        print(f"locks run {run + 1}/{runs}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
    return [results.summary_row(SYSTEM, name, unit, values[name], 2) for name, (unit, _caption) in SCENARIOS.items()]


def main() -> int:
    rows = measure(int(os.environ.get("BENCH_RUNS", "5")))
    results.merge_into(rows)
    for row in rows:
        print(f"{row['scenario']:32} {row['median']:>9} {row['unit']:10} [{row['min']}, {row['max']}] "
              f"({row['runs']} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
