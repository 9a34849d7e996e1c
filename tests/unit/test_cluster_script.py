"""deploy/local/cluster fails with one clear line, not a traceback, on the usual mistakes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "local" / "cluster"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CLUSTER), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_go_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()  # a PATH with no go on it, wherever go lives on this machine
    result = run({"LOCAL_CLUSTER_CACHE": str(tmp_path), "PATH": str(empty)}, "up")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "cluster: error: Go is not installed: `go` is needed to build the control plane")


def test_build_failure_names_the_log(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "go").write_text("#!/bin/sh\necho 'compile: something broke' >&2\nexit 3\n")
    (fake_bin / "go").chmod(0o755)
    result = run({"LOCAL_CLUSTER_CACHE": str(tmp_path / "cache"), "PATH": f"{fake_bin}:/usr/bin:/bin"}, "up")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("cluster: error: building etcd failed (exit 3); see ") and "Traceback" not in result.stderr
    log = Path(last.rsplit(" ", 1)[1])
    assert "something broke" in log.read_text()


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # Binaries come from the shared cache (built by the session fixture or `make`); state is private.
        result = run({"LOCAL_CLUSTER_STATE": str(tmp_path / "state"), "LOCAL_CLUSTER_APISERVER_PORT": str(port)}, "up")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"cluster: error: port 127.0.0.1:{port} is in use; free it or set LOCAL_CLUSTER_*_PORT")


def test_env_prints_exports() -> None:
    result = run({}, "env")
    lines = result.stdout.splitlines()
    assert result.returncode == 0
    assert lines[0].startswith("export KUBECONFIG=") and lines[1].startswith("export PATH=")
    assert "kubectl-" in lines[1] and "helm-" in lines[1]


def test_unknown_command_is_usage_error() -> None:
    result = run({}, "sideways")
    assert result.returncode == 2 and "usage" in result.stderr
