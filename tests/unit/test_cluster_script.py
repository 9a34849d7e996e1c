"""deploy/local/cluster fails with one clear line, not a traceback, on the usual mistakes, and is safe to
run twice at once (a lock beside the state directory)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import free_port

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


def _free_port_pair() -> int:
    """A port p with p and p + 1 free on loopback (etcd's client and peer ports)."""
    return free_port(2)


def _processes_with(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.cluster  # starts a private control plane (own state directory and ports)
def test_two_ups_at_once_leave_one_healthy_cluster(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"LOCAL_CLUSTER_STATE": str(state), "LOCAL_CLUSTER_APISERVER_PORT": str(_free_port_pair()),
           "LOCAL_CLUSTER_ETCD_PORT": str(_free_port_pair())}
    ups = [subprocess.Popen([sys.executable, str(CLUSTER), "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env}) for _ in range(2)]
    try:
        outcomes = [up.communicate(timeout=300) for up in ups]
        assert [up.returncode for up in ups] == [0, 0], outcomes
        said = sorted("already running" if "already running" in err else "started" if "ready in" in err else err
                      for _out, err in outcomes)
        assert said == ["already running", "started"]  # the second waited for the first, then reused it
        status = run(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        for name in ("etcd", "kube-apiserver"):
            pid = int((state / f"{name}.pid").read_text())
            assert f"{name}: running (pid {pid})" in status.stdout
        assert "readyz: ok" in status.stdout
        # One cluster, not two fighting over the state directory.
        assert len(_processes_with(str(state / "etcd-data"))) == 1
        assert len(_processes_with(f"--secure-port={env['LOCAL_CLUSTER_APISERVER_PORT']}")) == 1
    finally:
        down = run(env, "down")
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    assert _processes_with(str(state)) == []
    stopped = run(env, "status")
    assert stopped.returncode == 1 and "etcd: stopped" in stopped.stdout and "readyz: not ready" in stopped.stdout


def test_missing_node_packages_are_installed_with_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "deploy" / "local"))
    import node

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "apt-calls"
    (fake_bin / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (fake_bin / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:/usr/bin:/bin")
    present = tmp_path / "present-containerd"  # not the machine's own: a fresh machine has none yet
    present.touch()
    monkeypatch.setattr(node, "PACKAGES", {"containerd": str(present),
                                           "runc": str(tmp_path / "absent-runc"),
                                           "conntrack": str(tmp_path / "absent-conntrack")})
    node.ensure_packages()
    lines = calls.read_text().splitlines()
    assert lines[0] == "update -qq"
    assert lines[1].split() == ["install", "-y", "-qq", "--no-install-recommends", "runc", "conntrack"]


def test_pki_passes_strict_verification(tmp_path: Path) -> None:
    """What Python 3.13's default context demands (VERIFY_X509_STRICT): the CA has keyUsage, the
    leaves have the usual extensions; a handshake with the apiserver's certificate succeeds."""
    import ssl
    import threading

    sys.path.insert(0, str(ROOT / "deploy" / "local"))
    import localcluster

    pki = tmp_path / "pki"
    localcluster.make_pki(pki)
    ca_text = subprocess.run(["openssl", "x509", "-in", str(pki / "ca.crt"), "-noout", "-text"],
                             capture_output=True, text=True, check=True).stdout
    assert "CA:TRUE" in ca_text and "Certificate Sign, CRL Sign" in ca_text
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki / "apiserver.crt", pki / "apiserver.key")
    client_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    client_ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with socket.create_connection(listener.getsockname()) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() is not None
            tls.sendall(b"x")
        server.join(timeout=5)


def test_node_needs_root_and_says_so_before_starting_anything(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                             str(CLUSTER), "up", "--node"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "LOCAL_CLUSTER_CACHE": str(tmp_path / "cache"),
                                 "LOCAL_CLUSTER_STATE": str(tmp_path / "state")})
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "cluster: error: `up --node` needs root: it creates namespaces, mounts and cgroups")
    assert not (tmp_path / "state").exists()


def test_a_node_process_is_recognised_while_nsenter_still_holds_its_argv(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "deploy" / "local"))
    import localcluster

    # argv as nsenter's until it execs the program: "nsenter --net=PIN -- /path/kubelet --config=..."
    proc = subprocess.Popen(["bash", "-c", f"exec -a nsenter {sys.executable} -c 'import time; time.sleep(30)' "
                             "--net=/run/x -- /opt/bin/kubelet --v=1"])
    try:
        paths = localcluster.Paths(tmp_path)
        for name in ("kubelet", "kube-proxy"):
            paths.pid_file(name).write_text(str(proc.pid))
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"nsenter\0") and (
                time.monotonic() < deadline):
            time.sleep(0.01)
        assert localcluster.running_pid(paths, "kubelet") == proc.pid
        assert localcluster.running_pid(paths, "kube-proxy") is None
    finally:
        proc.kill()
        proc.wait()
