"""A real Kubernetes control plane on loopback: etcd and kube-apiserver as local processes.

Stdlib only, so `deploy/local/cluster` runs on a fresh machine before any virtualenv exists,
and the pytest fixture imports this same module (one code path for users, tests and CI).

Binaries are built from the Go module proxy with the versions pinned in `tools/*/go.mod` and
cached under `$LOCAL_CLUSTER_CACHE` (default `~/.cache/lease-sidecar`), keyed by a hash of
those pins, so a warm `up` only starts processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS_DIR = HERE / "tools"
CACHE_DIR = Path(os.environ.get("LOCAL_CLUSTER_CACHE", Path.home() / ".cache" / "lease-sidecar"))
STATE_DIR = Path(os.environ.get("LOCAL_CLUSTER_STATE", CACHE_DIR / "cluster"))
APISERVER_PORT = int(os.environ.get("LOCAL_CLUSTER_APISERVER_PORT", "16443"))
ETCD_CLIENT_PORT = int(os.environ.get("LOCAL_CLUSTER_ETCD_PORT", "12379"))
ETCD_PEER_PORT = ETCD_CLIENT_PORT + 1
READY_TIMEOUT_S = 120.0
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

KUBE_VERSION = "v1.37.2"  # must match tools/kube/go.mod; stamped into the binaries
_KUBE_VERSION_PKGS = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")


class ClusterError(Exception):
    """A failure worth one line to the user (no traceback)."""


@dataclass(frozen=True)
class Tool:
    """One binary built from a pinned Go module under tools/<module_dir>."""

    name: str
    module_dir: str
    package: str
    ldflags: str = ""

    def cache_path(self) -> Path:
        pins = TOOLS_DIR / self.module_dir
        digest = hashlib.sha256()
        for pin_file in ("go.mod", "go.sum"):
            digest.update((pins / pin_file).read_bytes())
        digest.update(self.ldflags.encode())
        return CACHE_DIR / "bin" / f"{self.name}-{digest.hexdigest()[:12]}" / self.name


def _kube_ldflags() -> str:
    minor = KUBE_VERSION.split(".")[1]
    flags = []
    for pkg in _KUBE_VERSION_PKGS:
        flags += [
            f"-X {pkg}.gitVersion={KUBE_VERSION}",
            f"-X {pkg}.gitMajor=1",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


TOOLS = {
    "etcd": Tool("etcd", "etcd", "go.etcd.io/etcd/server/v3"),
    "kube-apiserver": Tool(
        "kube-apiserver", "kube", "k8s.io/kubernetes/cmd/kube-apiserver", _kube_ldflags()
    ),
    "kubectl": Tool("kubectl", "kube", "k8s.io/kubernetes/cmd/kubectl", _kube_ldflags()),
    "helm": Tool("helm", "helm", "helm.sh/helm/v3/cmd/helm"),
    # The node's parts: the same pinned k8s.io/kubernetes module as the apiserver.
    **{name: Tool(name, "kube", f"k8s.io/kubernetes/cmd/{name}", _kube_ldflags())
       for name in ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler")},
    "promtool": Tool("promtool", "prometheus", "github.com/prometheus/prometheus/cmd/promtool"),
}
CONTROL_PLANE_TOOLS = ("etcd", "kube-apiserver", "kubectl", "helm")


def say(message: str) -> None:
    print(f"[local-cluster] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- building


def build(name: str) -> Path:
    """Return the cached binary for `name`, building it first if missing."""
    tool = TOOLS[name]
    target = tool.cache_path()
    if target.exists():
        return target
    if shutil.which("go") is None:
        raise ClusterError("Go is not installed: `go` is needed to build the control plane")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two processes (a test run and `make demo`, say) may want the same tool at once: one builds,
    # the other waits for it and then finds the binary.
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        return _build_locked(name, tool, target)


def _build_locked(name: str, tool: Tool, target: Path) -> Path:
    log_path = target.parent / "build.log"
    partial = target.with_suffix(".partial")
    say(f"building {name} from {tool.package} (log: {log_path}); a cold build takes minutes")
    started = time.monotonic()
    cmd = ["go", "build", "-trimpath", "-ldflags", f"-s -w {tool.ldflags}".strip(), "-o", str(partial), tool.package]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=TOOLS_DIR / tool.module_dir, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(15)
            if proc.poll() is None:
                say(f"  still building {name}: {time.monotonic() - started:.0f}s")
    if proc.returncode != 0:
        raise ClusterError(f"building {name} failed (exit {proc.returncode}); see {log_path}")
    partial.rename(target)
    say(f"built {name} in {time.monotonic() - started:.0f}s")
    return target


def build_all(names: tuple[str, ...] = CONTROL_PLANE_TOOLS) -> dict[str, Path]:
    return {name: build(name) for name in names}


# ---------------------------------------------------------------- certificates


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {result.stderr.strip().splitlines()[-1:]}")


def _issue_cert(pki: Path, name: str, subject: str, ext: str) -> None:
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", subject, cwd=pki)
    (pki / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "365", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=pki)


def make_pki(pki: Path) -> None:
    """CA, apiserver serving cert, admin client cert (system:masters), SA signing key."""
    if (pki / "admin.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "365", "-subj", "/CN=lease-sidecar-local-ca", cwd=pki)
    _issue_cert(pki, "apiserver", "/CN=kube-apiserver",
                "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
                "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
                "extendedKeyUsage=serverAuth\n")
    _issue_cert(pki, "admin", "/O=system:masters/CN=local-admin", "extendedKeyUsage=clientAuth\n")
    _openssl("genpkey", "-algorithm", "RSA", "-out", "sa.key", "-pkeyopt", "rsa_keygen_bits:2048", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, pki: Path) -> None:
    # JSON is valid YAML; kubectl, helm and kubernetes-asyncio all read it.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": f"https://127.0.0.1:{APISERVER_PORT}",
            "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "local-admin", "user": {
            "client-certificate": str(pki / "admin.crt"),
            "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local-admin"}}],
        "current-context": "local",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")


AUDIT_POLICY = """\
# Only Lease traffic is recorded: the benchmarks count API requests per user from it.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    resources: [{group: "coordination.k8s.io", resources: ["leases"]}]
  - level: None
"""


# ---------------------------------------------------------------- processes


@dataclass(frozen=True)
class Paths:
    root: Path = STATE_DIR

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    def pid_file(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.root / f"{name}.log"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); check its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def running_pid(paths: Paths, name: str) -> int | None:
    """The pid from the pid file, if that process is alive and is still our `name` (a stale pid
    file after a reboot or a killed session may name an unrelated process by now)."""
    try:
        pid = int(paths.pid_file(name).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) and Path(cmdline.decode(errors="replace")).name == name else None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _spawn(paths: Paths, name: str, argv: list[str]) -> int:
    log = open(paths.log_file(name), "ab")
    # A new session: the control plane outlives the shell (or pytest) that started it.
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=paths.root)
    paths.pid_file(name).write_text(str(proc.pid))
    return proc.pid


def _admin_ssl_context(paths: Paths) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(paths.pki / "ca.crt"))
    ctx.load_cert_chain(str(paths.pki / "admin.crt"), str(paths.pki / "admin.key"))
    return ctx


def is_ready(paths: Paths) -> bool:
    if not (paths.pki / "admin.crt").exists():
        return False
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{APISERVER_PORT}/readyz",
                                    context=_admin_ssl_context(paths), timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _wait_ready(paths: Paths, apiserver_pid: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if is_ready(paths):
            return
        if not _pid_alive(apiserver_pid):
            raise ClusterError(f"kube-apiserver exited during start-up; see {paths.log_file('kube-apiserver')}")
        time.sleep(0.3)
    raise ClusterError(f"kube-apiserver not ready after {READY_TIMEOUT_S:.0f}s; "
                       f"see {paths.log_file('kube-apiserver')}")


def _wait_port(port: int, pid: int, name: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if not _pid_alive(pid):
            raise ClusterError(f"{name} exited during start-up; see {log}")
        time.sleep(0.1)
    raise ClusterError(f"{name} did not listen on 127.0.0.1:{port}; see {log}")


def up(paths: Paths = Paths()) -> Paths:
    """Build what is missing, start etcd and kube-apiserver, wait for /readyz. Idempotent."""
    if running_pid(paths, "kube-apiserver") and is_ready(paths):
        say(f"already running: https://127.0.0.1:{APISERVER_PORT}")
        return paths
    bins = build_all()
    down(paths, quiet=True)  # a half-started or crashed plane: start from clean state
    for port in (APISERVER_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT):
        if not _port_free(port):
            raise ClusterError(f"port 127.0.0.1:{port} is in use; free it or set LOCAL_CLUSTER_*_PORT")
    paths.root.mkdir(parents=True, exist_ok=True)
    make_pki(paths.pki)
    write_kubeconfig(paths.kubeconfig, paths.pki)
    (paths.root / "audit-policy.yaml").write_text(AUDIT_POLICY)
    started = time.monotonic()
    etcd_pid = _spawn(paths, "etcd", [
        str(bins["etcd"]), "--name=local", f"--data-dir={paths.root / 'etcd-data'}",
        f"--listen-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}",
        f"--advertise-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}",
        f"--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
        f"--initial-cluster=local=http://127.0.0.1:{ETCD_PEER_PORT}",
        "--unsafe-no-fsync",  # test data only: fsync dominates latency on shared disks
        "--log-level=warn",
    ])
    _wait_port(ETCD_CLIENT_PORT, etcd_pid, "etcd", paths.log_file("etcd"))
    pki = paths.pki
    apiserver_pid = _spawn(paths, "kube-apiserver", [
        str(bins["kube-apiserver"]),
        f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={APISERVER_PORT}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-cluster-ip-range=10.96.0.0/16",
        # No kubelets or Services here; a loopback advertise address needs no endpoint reconciling.
        "--endpoint-reconciler-type=none",
        f"--audit-policy-file={paths.root / 'audit-policy.yaml'}",
        f"--audit-log-path={paths.audit_log}", "--audit-log-mode=batch",
        "--audit-log-batch-max-wait=1s",
        "--v=1",
    ])
    _wait_ready(paths, apiserver_pid)
    say(f"ready in {time.monotonic() - started:.1f}s: https://127.0.0.1:{APISERVER_PORT} "
        f"(KUBECONFIG={paths.kubeconfig})")
    return paths


def _stop(paths: Paths, name: str) -> None:
    pid = running_pid(paths, name)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    paths.pid_file(name).unlink(missing_ok=True)


def down(paths: Paths = Paths(), quiet: bool = False) -> None:
    """Stop both processes and remove their state (PKI, etcd data, logs)."""
    for name in ("kube-apiserver", "etcd"):
        _stop(paths, name)
    if paths.root.exists():
        shutil.rmtree(paths.root)
    if not quiet:
        say("stopped; state removed")


def pause_apiserver(paths: Paths = Paths()) -> int:
    """SIGSTOP the apiserver (for outage tests); returns its pid for resume."""
    pid = running_pid(paths, "kube-apiserver")
    if pid is None:
        raise ClusterError("kube-apiserver is not running")
    os.kill(pid, signal.SIGSTOP)
    return pid


def resume_apiserver(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def status(paths: Paths = Paths()) -> bool:
    healthy = True
    for name in ("etcd", "kube-apiserver"):
        pid = running_pid(paths, name)
        print(f"{name}: {f'running (pid {pid})' if pid else 'stopped'}")
        healthy = healthy and pid is not None
    ready = is_ready(paths)
    print(f"readyz: {'ok' if ready else 'not ready'}")
    return healthy and ready


def env_lines(paths: Paths = Paths()) -> list[str]:
    bin_dirs = [str(TOOLS[name].cache_path().parent) for name in ("kubectl", "helm")]
    return [
        f"export KUBECONFIG={paths.kubeconfig}",
        f"export PATH={':'.join(bin_dirs)}:$PATH",
    ]


def main(argv: list[str]) -> int:
    usage = "usage: cluster {up|env|status|down|build [tool...]}"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "up":
            up()
        elif command == "env":
            print("\n".join(env_lines()))
        elif command == "status":
            return 0 if status() else 1
        elif command == "down":
            down()
        elif command == "build":
            for name in rest or CONTROL_PLANE_TOOLS:
                if name not in TOOLS:
                    raise ClusterError(f"unknown tool {name!r}; known: {', '.join(TOOLS)}")
                print(build(name))
        else:
            print(usage, file=sys.stderr)
            return 2
    except ClusterError as error:
        print(f"cluster: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
