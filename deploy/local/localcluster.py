"""A real Kubernetes control plane on loopback: etcd and kube-apiserver as local processes.

Stdlib only, so `deploy/local/cluster` runs on a fresh machine before any virtualenv exists,
and the pytest fixture imports this same module (one code path for users, tests and CI).

Binaries are built from the Go module proxy with the versions pinned in `tools/*/go.mod` and
cached under `$LOCAL_CLUSTER_CACHE` (default `~/.cache/lease-sidecar`), keyed by a hash of
those pins, so a warm `up` only starts processes. `up --node` adds a real node (node.py).

`up` and `down` hold an fcntl lock on `<state dir>.lock`: two at once serialize, and the
second `up` finds the cluster the first one started.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS_DIR = HERE / "tools"
CACHE_DIR = Path(os.environ.get("LOCAL_CLUSTER_CACHE", Path.home() / ".cache" / "lease-sidecar"))
STATE_DIR = Path(os.environ.get("LOCAL_CLUSTER_STATE", CACHE_DIR / "cluster"))
APISERVER_PORT = int(os.environ.get("LOCAL_CLUSTER_APISERVER_PORT", "16443"))
ETCD_CLIENT_PORT = int(os.environ.get("LOCAL_CLUSTER_ETCD_PORT", "12379"))
ETCD_PEER_PORT = ETCD_CLIENT_PORT + 1
EXTRA_APISERVER_ARGS = tuple(os.environ.get("LOCAL_CLUSTER_APISERVER_ARGS", "").split())
"""More kube-apiserver flags, for a private control plane (e.g. a feature gate a test needs); the
shared one runs without."""
READY_TIMEOUT_S = 120.0
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The node's addresses (node.py): they exist only inside the node's network namespace, but the
# apiserver advertises NODE_IP and its certificate names both, with or without a node.
NODE_NAME = "local-node"
NODE_IP = "10.222.0.2"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR
PKI_VERSION = "2"  # bump when the certificates change; an older PKI is replaced by `up`

KUBE_VERSION = "v1.37.2"  # must match tools/kube/go.mod; stamped into the binaries
_KUBE_VERSION_PKGS = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")


class ClusterError(Exception):
    """A failure worth one line to the user (no traceback)."""


@dataclass(frozen=True)
class Tool:
    """One binary built from a pinned Go module under tools/<module_dir>.

    Tools with the same `bundle` come out of one `go build` of all their packages (one cold
    compile of what they share, e.g. prometheus and promtool) into one cache directory.
    """

    name: str
    module_dir: str
    package: str
    ldflags: str = ""
    tags: str = ""
    static: bool = False  # CGO_ENABLED=0: the binary runs in an image with no libc
    bundle: str = ""

    def cache_path(self) -> Path:
        pins = TOOLS_DIR / self.module_dir
        digest = hashlib.sha256()
        for pin_file in ("go.mod", "go.sum"):
            digest.update((pins / pin_file).read_bytes())
        digest.update(self.ldflags.encode())
        if self.tags or self.static or self.bundle:
            digest.update(f"{self.tags}|{self.static}|{sorted(bundle_packages(self))}".encode())
        if not self.bundle:
            return CACHE_DIR / "bin" / f"{self.name}-{digest.hexdigest()[:12]}" / self.name
        # `go build -o DIR/ pkg...` names each binary after its package's last element.
        return CACHE_DIR / "bin" / f"{self.bundle}-{digest.hexdigest()[:12]}" / self.package.rsplit("/", 1)[1]


def bundle_packages(tool: Tool) -> list[str]:
    if not tool.bundle:
        return [tool.package]
    return [other.package for other in TOOLS.values() if other.bundle == tool.bundle]


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
    # Kubernetes (and file/http) discovery only: the cloud SDKs are left out, which halves the
    # compile on 2 cores. The server and promtool share one build (tools/prometheus pins both).
    **{name: Tool(name, "prometheus", f"github.com/prometheus/prometheus/cmd/{name}",
                  "-X github.com/prometheus/common/version.Version=3.15.0",
                  tags="netgo,remove_all_sd,enable_kubernetes_sd", static=True, bundle="prometheus")
       for name in ("prometheus", "promtool")},
    **{name: Tool(name, "prometheus-operator", f"github.com/prometheus-operator/prometheus-operator/cmd/{command}",
                  "-X github.com/prometheus/common/version.Version=0.85.0",
                  static=True, bundle="prometheus-operator")
       for name, command in (("prometheus-operator", "operator"),
                             ("prometheus-config-reloader", "prometheus-config-reloader"))},
    "dashboard-check": Tool("dashboard-check", "dashboard", "leasesidecar.local/tools/dashboard"),
}
# Started in the background at the beginning of `make test` (the monitoring tests need them).
MONITORING_TOOLS = ("prometheus", "prometheus-operator", "dashboard-check")
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
    packages = bundle_packages(tool)
    what = name if len(packages) == 1 else " and ".join(package.rsplit("/", 1)[1] for package in packages)
    say(f"building {what} from {' '.join(packages)} (log: {log_path}); a cold build takes minutes")
    started = time.monotonic()
    cmd = ["go", "build", "-trimpath", "-ldflags", f"-s -w {tool.ldflags}".strip()]
    if tool.tags:
        cmd += ["-tags", tool.tags]
    if tool.bundle:
        partial = target.parent / "partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        cmd += ["-o", f"{partial}/", *packages]
    else:
        partial = target.with_suffix(".partial")
        cmd += ["-o", str(partial), tool.package]
    env = {**os.environ, "CGO_ENABLED": "0"} if tool.static else None
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=TOOLS_DIR / tool.module_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(15)
            if proc.poll() is None:
                say(f"  still building {what}: {time.monotonic() - started:.0f}s")
    if proc.returncode != 0:
        raise ClusterError(f"building {what} failed (exit {proc.returncode}); see {log_path}")
    if tool.bundle:
        for built in partial.iterdir():
            built.rename(target.parent / built.name)
        partial.rmdir()
    else:
        partial.rename(target)
    say(f"built {what} in {time.monotonic() - started:.0f}s")
    return target


def build_all(names: tuple[str, ...] = CONTROL_PLANE_TOOLS) -> dict[str, Path]:
    return {name: build(name) for name in names}


# ---------------------------------------------------------------- certificates


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {result.stderr.strip().splitlines()[-1:]}")


# Extensions as a real cluster's (kubeadm's): Python 3.13's default TLS context rejects a CA
# without keyUsage and leaves without authorityKeyIdentifier.
_CA_EXTENSIONS = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
_LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""
_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _issue_cert(pki: Path, name: str, subject: str, usage: str, sans: tuple[str, ...] = ()) -> None:
    _openssl("req", "-new", *_EC_KEY, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
             cwd=pki)
    ext = _LEAF_EXTENSIONS.format(usage=usage) + (f"subjectAltName = {','.join(sans)}\n" if sans else "")
    (pki / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "365", "-sha256", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=pki)


# name -> (subject, extendedKeyUsage, SANs). Client certificates carry the identity RBAC and the
# Node authorizer expect; the kubelet's serving certificate names the node as the apiserver dials it.
def _leaf_certs() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    return {
        "apiserver": ("/CN=kube-apiserver", "serverAuth", (
            "IP:127.0.0.1", f"IP:{NODE_IP}", f"IP:{KUBERNETES_SERVICE_IP}", "DNS:localhost", "DNS:kubernetes",
            "DNS:kubernetes.default", "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local")),
        "admin": ("/O=system:masters/CN=local-admin", "clientAuth", ()),
        "apiserver-kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client", "clientAuth", ()),
        "kubelet": (f"/O=system:nodes/CN=system:node:{NODE_NAME}", "clientAuth", ()),
        "kubelet-serving": (f"/O=system:nodes/CN=system:node:{NODE_NAME}", "serverAuth",
                            (f"IP:{NODE_IP}", "IP:127.0.0.1", f"DNS:{NODE_NAME}")),
        "kube-proxy": ("/CN=system:kube-proxy", "clientAuth", ()),
        "kube-controller-manager": ("/CN=system:kube-controller-manager", "clientAuth", ()),
        "kube-scheduler": ("/CN=system:kube-scheduler", "clientAuth", ()),
    }


def pki_current(pki: Path) -> bool:
    version = pki / "VERSION"
    return version.exists() and version.read_text().strip() == PKI_VERSION


def make_pki(pki: Path) -> None:
    """CA, apiserver serving cert, client certs (admin, node parts), kubelet serving cert, SA key."""
    if pki_current(pki):
        return
    if pki.exists():
        shutil.rmtree(pki)
    pki.mkdir(parents=True)
    (pki / "openssl.cnf").write_text(_CA_EXTENSIONS)
    _openssl("req", "-x509", "-new", *_EC_KEY, "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
             "-sha256", "-subj", "/CN=lease-sidecar-local-ca", "-config", "openssl.cnf", "-extensions", "ca",
             cwd=pki)
    for name, (subject, usage, sans) in _leaf_certs().items():
        _issue_cert(pki, name, subject, usage, sans)
    _openssl("genpkey", "-algorithm", "RSA", "-out", "sa.key", "-pkeyopt", "rsa_keygen_bits:2048", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    (pki / "VERSION").write_text(PKI_VERSION + "\n")


def write_kubeconfig(path: Path, pki: Path, user: str = "admin") -> None:
    """A kubeconfig for `user` (a client certificate in `pki`), server https://127.0.0.1:APISERVER_PORT
    (that address works on the machine and, through nsforward, inside the node namespace)."""
    # JSON is valid YAML; kubectl, helm and kubernetes-asyncio all read it.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": f"https://127.0.0.1:{APISERVER_PORT}",
            "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(pki / f"{user}.crt"),
            "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
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

    @property
    def lock_file(self) -> Path:
        # Beside the state directory, not in it: `down` removes the directory, the lock stays valid.
        return self.root.parent / f"{self.root.name}.lock"

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
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    # `name` is the program (argv[0]), or for a script such as nsforward.py, argv[1]'s stem.
    names = {Path(arg.decode(errors="replace")).name for arg in argv[:1]}
    names |= {Path(arg.decode(errors="replace")).stem for arg in argv[1:2]}
    # A node process is started by nsenter, which execs it: for a moment argv is nsenter's.
    if argv[:1] and Path(argv[0].decode(errors="replace")).name == "nsenter" and b"--" in argv[:-1]:
        names.add(Path(argv[argv.index(b"--") + 1].decode(errors="replace")).name)
    return pid if _pid_alive(pid) and name in names else None


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


def api_get(paths: Paths, api_path: str, method: str = "GET") -> dict | None:
    """GET (or DELETE) an API path as the admin; None when absent or unreachable."""
    request = urllib.request.Request(f"https://127.0.0.1:{APISERVER_PORT}{api_path}", method=method)
    try:
        with urllib.request.urlopen(request, context=_admin_ssl_context(paths), timeout=5) as resp:
            return json.load(resp)
    except (urllib.error.URLError, OSError, ssl.SSLError, ValueError):
        return None


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


@contextlib.contextmanager
def state_lock(paths: Paths, shared: bool = False, wait: bool = True) -> Iterator[bool]:
    """fcntl lock beside the state directory: `up` and `down` hold it exclusively, so a second
    `up` waits for the first and then finds the cluster running. Yields whether it was taken
    (always True when `wait`)."""
    paths.lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.lock_file, "a") as lock:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(lock, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


EGRESS_SELECTOR = """\
# The apiserver lives in the machine's network namespace, the kubelet and pods in the node's:
# traffic to them ("cluster") goes as HTTP CONNECT over a unix socket to nsforward, which dials
# inside the node's namespace (see node.py). Without a node the socket is absent and such
# requests (logs, exec) fail, as they would with no node at all.
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
  - name: cluster
    connection:
      proxyProtocol: HTTPConnect
      transport:
        uds:
          udsName: {socket}
"""


def _apiserver_argv(paths: Paths, binary: Path) -> list[str]:
    """One configuration with or without a node, so adding the node never restarts the apiserver."""
    pki = paths.pki
    return [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
        # Serves on loopback only; advertises the node IP, which the `kubernetes` Service's endpoint
        # points at and which exists only inside the node's namespace (nsforward relays it here).
        "--bind-address=127.0.0.1", f"--advertise-address={NODE_IP}", f"--secure-port={APISERVER_PORT}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",  # no DNS for the node's name
        f"--egress-selector-config-file={paths.root / 'egress-selector.yaml'}",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--audit-policy-file={paths.root / 'audit-policy.yaml'}",
        f"--audit-log-path={paths.audit_log}", "--audit-log-mode=batch",
        "--audit-log-batch-max-wait=1s",
        "--v=1",
        *EXTRA_APISERVER_ARGS,
    ]


def _running_argv(pid: int) -> list[str]:
    try:
        return [arg.decode() for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    except OSError:
        return []


def up(paths: Paths = Paths(), with_node: bool = False) -> Paths:
    """Build what is missing, start etcd and kube-apiserver, wait for /readyz; with `with_node`, the
    node too (node.py). Idempotent; concurrent calls serialize on the state lock and reuse."""
    if with_node and os.geteuid() != 0:
        raise ClusterError("`up --node` needs root: it creates namespaces, mounts and cgroups")
    with state_lock(paths):
        _up_control_plane(paths)
        if with_node:
            import node  # here, not at the top: node.py imports this module

            node.up(paths)
    return paths


def _answers_in_time(paths: Paths, pid: int) -> bool:
    """A running apiserver may be slow (a loaded machine) or paused (an outage test's SIGSTOP):
    wait for it rather than tear down a cluster others are using."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while _pid_alive(pid) and time.monotonic() < deadline:
        if is_ready(paths):
            return True
        time.sleep(0.5)
    return False


def _up_control_plane(paths: Paths) -> None:
    pid = running_pid(paths, "kube-apiserver")
    if pid and pki_current(paths.pki) and running_pid(paths, "etcd") and _answers_in_time(paths, pid):
        wanted = _apiserver_argv(paths, TOOLS["kube-apiserver"].cache_path())
        if _running_argv(pid) == wanted:
            say(f"already running: https://127.0.0.1:{APISERVER_PORT}")
            return
        # Started by an older version of this script: restart the apiserver alone, etcd keeps the data.
        say("kube-apiserver runs with an older configuration: restarting it")
        if _node_may_exist(paths):  # its scheduler and kube-proxy do not survive the restart well
            import node

            node.down(paths)
        _stop(paths, "kube-apiserver")
        _start_apiserver(paths, build_all()["kube-apiserver"])
        return
    bins = build_all()
    down(paths, quiet=True, locked=True)  # a half-started or crashed plane, or an old PKI: start clean
    for port in (APISERVER_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT):
        if not _port_free(port):
            raise ClusterError(f"port 127.0.0.1:{port} is in use; free it or set LOCAL_CLUSTER_*_PORT")
    paths.root.mkdir(parents=True, exist_ok=True)
    make_pki(paths.pki)
    write_kubeconfig(paths.kubeconfig, paths.pki)
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
    _start_apiserver(paths, bins["kube-apiserver"])
    say(f"ready in {time.monotonic() - started:.1f}s: https://127.0.0.1:{APISERVER_PORT} "
        f"(KUBECONFIG={paths.kubeconfig})")


def _start_apiserver(paths: Paths, binary: Path) -> None:
    (paths.root / "audit-policy.yaml").write_text(AUDIT_POLICY)
    (paths.root / "egress-selector.yaml").write_text(EGRESS_SELECTOR.format(socket=paths.root / "egress.sock"))
    apiserver_pid = _spawn(paths, "kube-apiserver", _apiserver_argv(paths, binary))
    _wait_ready(paths, apiserver_pid)


def _stop(paths: Paths, name: str, timeout_s: float = 15.0) -> None:
    pid = running_pid(paths, name)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    paths.pid_file(name).unlink(missing_ok=True)


def _node_may_exist(paths: Paths) -> bool:
    return (paths.root / "node").exists() or Path("/run/lease-sidecar-node").exists()


def down(paths: Paths = Paths(), quiet: bool = False, locked: bool = False, node_only: bool = False) -> None:
    """Stop the node (if any), then etcd and the apiserver, and remove their state. With
    `node_only`, the control plane keeps running."""
    with contextlib.nullcontext() if locked else state_lock(paths):
        if _node_may_exist(paths):
            import node

            node.down(paths)
        if node_only:
            if not quiet:
                say("node stopped; the control plane keeps running")
            return
        for name in ("kube-apiserver", "etcd"):
            _stop(paths, name)
        if paths.root.exists():
            shutil.rmtree(paths.root)
    if not quiet:
        say("stopped; state removed")


def status(paths: Paths = Paths()) -> bool:
    """Print what runs; True when the control plane (and the node, if it was started) is healthy."""
    with state_lock(paths, shared=True, wait=False) as quiet:
        if not quiet:
            print("note: an `up` or `down` is in progress; this is the state right now")
        healthy = True
        for name in ("etcd", "kube-apiserver"):
            pid = running_pid(paths, name)
            print(f"{name}: {f'running (pid {pid})' if pid else 'stopped'}")
            healthy = healthy and pid is not None
        ready = is_ready(paths)
        print(f"readyz: {'ok' if ready else 'not ready'}")
        healthy = healthy and ready
        if (paths.root / "node").exists():
            import node

            healthy = node.status(paths) and healthy
    return healthy


def env_lines(paths: Paths = Paths()) -> list[str]:
    bin_dirs = [str(TOOLS[name].cache_path().parent) for name in ("kubectl", "helm")]
    lines = [
        f"export KUBECONFIG={paths.kubeconfig}",
        f"export PATH={':'.join(bin_dirs)}:$PATH",
    ]
    if (paths.root / "node").exists():
        # For `ctr --address=$CONTAINERD_ADDRESS -n k8s.io images ls` and the like.
        lines.append(f"export CONTAINERD_ADDRESS={paths.root / 'node' / 'containerd.sock'}")
    return lines


USAGE = """\
usage: cluster {up [--node] | env | status | down [--node] | build [tool...]}
  up          etcd + kube-apiserver on 127.0.0.1 (idempotent)
  up --node   ... and a node (containerd, kubelet, kube-proxy, controller-manager, scheduler)
              in its own network namespace; needs root
  down        stop everything and remove the state; down --node stops only the node"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    with_node = rest == ["--node"]
    try:
        if command == "up" and rest in ([], ["--node"]):
            up(with_node=with_node)
        elif command == "env" and not rest:
            print("\n".join(env_lines()))
        elif command == "status" and not rest:
            return 0 if status() else 1
        elif command == "down" and rest in ([], ["--node"]):
            down(node_only=with_node)
        elif command == "build":
            for name in rest or CONTROL_PLANE_TOOLS:
                if name not in TOOLS:
                    raise ClusterError(f"unknown tool {name!r}; known: {', '.join(TOOLS)}")
                print(build(name))
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except ClusterError as error:
        print(f"cluster: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
