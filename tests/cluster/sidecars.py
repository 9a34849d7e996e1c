"""Real `lease-sidecar run` processes for cluster tests and the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ports import free_port

FAST = ("--leader-lease-ttl", "4", "--leader-renewal-interval", "1", "--heartbeat-interval", "1",
        "--heartbeat-ttl", "3", "--failover-timeout", "10")


@dataclass
class Sidecar:
    identity: str
    process: subprocess.Popen[bytes]
    http_port: int
    metrics_port: int
    role_dir: Path
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def post(self, path: str, body: bytes | dict[str, Any] | None = None, timeout: float = 2.0) -> tuple[int, Any]:
        data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def leader(self) -> dict[str, Any] | None:
        try:
            return self.get("/leader")[1]
        except (OSError, ValueError):
            return None

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
            return resp.read().decode()

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def start(identity: str, lease: str, namespace: str, workdir: Path, *extra_args: str,
          kubeconfig: Path | None = None, env: dict[str, str] | None = None, timing: tuple[str, ...] = FAST,
          wait_ready: bool = True, drop_env: tuple[str, ...] = ()) -> Sidecar:
    """`env` is added to this process's environment, after removing the variables named in `drop_env`."""
    http_port, metrics_port = free_port(), free_port()
    role_dir = workdir / identity / "role"
    log_path = workdir / identity / "sidecar.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "sidecar", "run", "--lease-name", lease, "--namespace", namespace,
            "--identity", identity, "--http-address", f"127.0.0.1:{http_port}",
            "--metrics-address", f"127.0.0.1:{metrics_port}", "--role-dir", str(role_dir), *timing, *extra_args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),
                               env={**{k: v for k, v in os.environ.items() if k not in drop_env}, **(env or {})})
    sidecar = Sidecar(identity, process, http_port, metrics_port, role_dir, log_path)
    if wait_ready:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not sidecar.alive():
                raise AssertionError(f"{identity} exited {process.returncode}: {sidecar.logs()[-2000:]}")
            try:
                if sidecar.get("/readyz", timeout=0.5)[0] == 200:
                    return sidecar
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{identity} not ready: {sidecar.logs()[-2000:]}")
    return sidecar


def leaders(sidecars: list[Sidecar]) -> list[str]:
    result = []
    for sidecar in sidecars:
        if sidecar.alive():
            body = sidecar.leader()
            if body and body["is_leader"]:
                result.append(sidecar.identity)
    return result


def wait_for(predicate: Any, timeout: float, interval: float = 0.01) -> float:
    """Polls until predicate() is truthy; returns the seconds waited (monotonic)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def stop_all(sidecars: list[Sidecar]) -> None:
    for sidecar in sidecars:
        if sidecar.alive():
            sidecar.process.kill()
            sidecar.process.wait(10)


APP_SCRIPT = """
import sys, time
from sidecar import client
url, interval, count = sys.argv[1], float(sys.argv[2]), 0
while True:
    count += 1
    client.heartbeat(url, schedule_count=count, next_due_task="tick", request_timeout_s=0.5)
    time.sleep(interval)
"""


def start_app(sidecar: Sidecar, interval_s: float = 0.2) -> subprocess.Popen[bytes]:
    """A process standing in for the app: heartbeats its sidecar every `interval_s` until killed
    (SIGKILL: a crash) or stopped (SIGSTOP: a hang)."""
    return subprocess.Popen([sys.executable, "-c", APP_SCRIPT, sidecar.url, str(interval_s)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
