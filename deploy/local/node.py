"""A real node beside the local control plane: containerd + runc + CNI, kubelet, kube-proxy,
kube-controller-manager and kube-scheduler (`deploy/local/cluster up --node`).

Where things run (the network rule: no node, pod or Service address, all 10.x, ever exists in
the machine's own network namespace, and nothing there sends a packet to a private address):

  machine's namespace   etcd, kube-apiserver (127.0.0.1:16443, as without a node),
                        kube-controller-manager, kube-scheduler (they only dial 127.0.0.1),
                        nsforward.py: the relay, the one process holding sockets on both sides.
  node namespace        a network namespace and a mount namespace created here and pinned
                        under /run/lease-sidecar-node; inside: a veth pair carrying the node IP
                        (the kernel has no `dummy` links), containerd (own config, root, state,
                        socket), the pods' bridge and veths (CNI), kubelet, kube-proxy and its
                        iptables chains.

  host -> apiserver     127.0.0.1:16443, unchanged.
  node/pods -> apiserver  NODE_IP:16443 (the `kubernetes` Service 10.96.0.1:443 is DNATed to
                        it by kube-proxy) and 127.0.0.1:16443 inside the namespace, both served by
                        nsforward listening in the node namespace and dialling 127.0.0.1:16443.
  apiserver -> kubelet  (logs, exec, proxy) the apiserver's egress selector sends "cluster"
                        traffic as HTTP CONNECT over a unix socket to nsforward, which dials
                        inside the node namespace.

The mount namespace (a slave of the machine's) hides the fixed paths kubelet and containerd
write: /var/lib (kubelet, cni) and /var/log (pods, containers) are bind mounts of directories
under the state directory, /run is a private tmpfs (containerd shims, runc, pod netns pins).
Mounts made by the node (volumes, overlay rootfs) never appear in the machine's mount table and
vanish with the namespace. What does reach the machine: processes, the cgroups kubelet creates
(/sys/fs/cgroup/*/kubepods), the two pins, the machine-wide lock file. `down` removes all but the
lock file (an empty file in /run/lock, the conventional place, gone at reboot).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import localcluster as lc

NODE_NAME = lc.NODE_NAME
NODE_IP = lc.NODE_IP  # on veth `node0` inside the node namespace only
NODE_PREFIX_LEN = 24
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
KUBERNETES_SERVICE_IP = lc.KUBERNETES_SERVICE_IP
PAUSE_IMAGE = "localhost/lease-sidecar/pause:3.10.2"
NODE_READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
UNIX_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL

# Machine-wide: kubelet's cgroups and fixed paths allow one node per machine.
NODE_RUN = Path("/run/lease-sidecar-node")
NODE_LOCK = Path("/run/lock/lease-sidecar-node.lock")
NETNS_PIN = NODE_RUN / "net"
MNTNS_PIN = NODE_RUN / "mnt"
OWNER_FILE = NODE_RUN / "owner"  # the state directory of the running node

NODE_TOOLS = ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler")
# Processes in start order; stopped in reverse. The first three live in the node namespace.
NODE_PROCESSES = ("nsforward", "containerd", "kubelet", "kube-proxy",
                  "kube-controller-manager", "kube-scheduler")
IN_NAMESPACE = ("containerd", "kubelet", "kube-proxy")

# Debian packages the node needs, found by a file each installs.
PACKAGES = {
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "conntrack": "/usr/sbin/conntrack",
    "iproute2": "/bin/ip",  # the node namespace's links and addresses
    "gcc": "/usr/bin/gcc",  # the pause binary
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",  # ... linked statically
}
CNI_BIN_DIR = "/usr/lib/cni"


@dataclass(frozen=True)
class NodePaths:
    """Everything the node writes, under the control plane's state directory."""

    cluster: lc.Paths

    @property
    def root(self) -> Path:
        return self.cluster.root / "node"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def egress_socket(self) -> Path:
        return self.cluster.root / "egress.sock"

    @property
    def var_lib(self) -> Path:
        return self.root / "var-lib"  # mounted on /var/lib in the node namespace

    @property
    def var_log(self) -> Path:
        return self.root / "var-log"  # mounted on /var/log in the node namespace

    def kubeconfig(self, user: str) -> Path:
        return self.root / f"{user}.kubeconfig"


@dataclass(frozen=True)
class Node:
    """What `node_up()` hands to tests and scripts."""

    paths: lc.Paths
    kubeconfig: Path
    containerd_socket: Path
    name: str = NODE_NAME
    ip: str = NODE_IP

    def env(self) -> dict[str, str]:
        """The environment for kubectl, helm and ctr against this node."""
        bin_dirs = [str(lc.TOOLS[name].cache_path().parent) for name in ("kubectl", "helm")]
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "CONTAINERD_ADDRESS": str(self.containerd_socket),
                "PATH": f"{':'.join(bin_dirs)}:{os.environ.get('PATH', '')}"}

    def run(self, tool: str, *args: str, check: bool = True, timeout_s: float = 120.0,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run kubectl or helm (the cluster's versions) against this node; `check` raises ClusterError
        with the tool's stderr."""
        result = subprocess.run([str(lc.TOOLS[tool].cache_path()), *args], capture_output=True, text=True,
                                env=self.env(), timeout=timeout_s, input=stdin)
        if check and result.returncode != 0:
            raise lc.ClusterError(f"{tool} {' '.join(args)} failed (exit {result.returncode}): "
                                  f"{result.stderr.strip()[-2000:]}")
        return result

    def kubectl(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, **kwargs)  # type: ignore[arg-type]

    def helm(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, **kwargs)  # type: ignore[arg-type]

    def import_image(self, tarball: Path) -> None:
        import_image(tarball, self.paths)


def node_up(paths: lc.Paths | None = None) -> Node:
    """`deploy/local/cluster up --node`: the control plane and the node, Ready. Idempotent."""
    paths = lc.up(paths or lc.Paths(), with_node=True)
    return Node(paths, paths.kubeconfig, NodePaths(paths).containerd_socket)


# ---------------------------------------------------------------- prerequisites


def ensure_packages() -> None:
    """apt-get install the Debian parts that are missing (a fresh machine has none of them)."""
    missing = [pkg for pkg, marker in PACKAGES.items() if not Path(marker).exists()]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise lc.ClusterError(f"missing packages {' '.join(missing)} and no apt-get to install them")
    lc.say(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise lc.ClusterError(f"{' '.join(cmd[:2])} failed: {result.stderr.strip().splitlines()[-1:]}")


def _go_module_dir(module: str) -> Path:
    result = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True,
                            cwd=lc.TOOLS_DIR / "kube")
    modcache = Path(result.stdout.strip())
    path = modcache / f"{module}@{lc.KUBE_VERSION}"
    if not path.exists():  # the kube tools build downloads it; `go mod download` if built elsewhere
        subprocess.run(["go", "mod", "download", module], cwd=lc.TOOLS_DIR / "kube", capture_output=True)
    if not path.exists():
        raise lc.ClusterError(f"{module}@{lc.KUBE_VERSION} is not in the Go module cache ({modcache})")
    return path


def _tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A reproducible tar (fixed owner and mtime) of name -> (content, mode)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def pause_image() -> Path:
    """The sandbox image: Kubernetes' own pause.c, static, alone in a docker-archive tarball."""
    source = _go_module_dir("k8s.io/kubernetes") / "build" / "pause" / "linux" / "pause.c"
    digest = hashlib.sha256(source.read_bytes() + PAUSE_IMAGE.encode()).hexdigest()[:12]
    tarball = lc.CACHE_DIR / "images" / f"pause-{digest}.tar"
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    binary = tarball.with_suffix(".bin")
    result = subprocess.run(["gcc", "-Os", "-static", "-DVERSION=v3.10.2-lease-sidecar", "-o", str(binary),
                             str(source)], capture_output=True, text=True)
    if result.returncode != 0:
        raise lc.ClusterError(f"building pause failed: {result.stderr.strip()[-300:]}")
    subprocess.run(["strip", str(binary)], capture_output=True)
    layer = _tar_bytes({"pause": (binary.read_bytes(), 0o755)})
    binary.unlink()
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
    }, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [PAUSE_IMAGE],
                            "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    partial = tarball.with_suffix(".partial")
    partial.write_bytes(_tar_bytes({f"{layer_id}/layer.tar": (layer, 0o644), config_name: (config, 0o644),
                                    "manifest.json": (manifest, 0o644)}))
    partial.rename(tarball)
    return tarball


# ---------------------------------------------------------------- namespaces


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise lc.ClusterError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result


def _in_node(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("nsenter", f"--net={NETNS_PIN}", f"--mount={MNTNS_PIN}", "--", *cmd, check=check)


def _node_prefix() -> list[str]:
    return ["nsenter", f"--net={NETNS_PIN}", f"--mount={MNTNS_PIN}", "--"]


def create_namespaces(node: NodePaths) -> None:
    """Pin a new network + mount namespace and set them up; nothing is configured outside."""
    for directory in (node.var_lib, node.var_log, node.root / "cni"):
        directory.mkdir(parents=True, exist_ok=True)
    NODE_RUN.mkdir(parents=True, exist_ok=True)
    # A mount namespace can only be pinned on a private mount: make NODE_RUN one.
    _run("mount", "--bind", str(NODE_RUN), str(NODE_RUN))
    _run("mount", "--make-private", str(NODE_RUN))
    NETNS_PIN.touch()
    MNTNS_PIN.touch()
    OWNER_FILE.write_text(str(node.cluster.root))
    _run("unshare", f"--net={NETNS_PIN}", f"--mount={MNTNS_PIN}", "--propagation", "slave", "true")
    setup = [
        "set -e",
        "mount -t tmpfs -o mode=755 lease-sidecar-node-run /run",
        "mkdir -p /run/lock /run/netns",
        f"mount --bind {node.var_lib} /var/lib",
        f"mount --bind {node.var_log} /var/log",
        "ip link set lo up",
        "ip link add node0 type veth peer name node0-peer",
        f"ip addr add {NODE_IP}/{NODE_PREFIX_LEN} dev node0",
        "ip link set node0 up",
        "ip link set node0-peer up",
        "ip route add default dev node0",
        "echo 1 > /proc/sys/net/ipv4/ip_forward",  # this namespace's, not the machine's
        # Pod -> Service -> pod on the same bridge needs bridged traffic to see iptables.
        "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables || true",
    ]
    _in_node("sh", "-c", "\n".join(setup))


def _namespace_inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _processes_in_node(cgroup_roots: list[Path]) -> set[int]:
    """Every process in the node's network or mount namespace or in its pods' cgroups."""
    wanted = {_namespace_inode(NETNS_PIN), _namespace_inode(MNTNS_PIN)} - {None}
    pids: set[int] = set()
    if wanted:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if {os.stat(entry / "ns" / "net").st_ino, os.stat(entry / "ns" / "mnt").st_ino} & wanted:
                    pids.add(int(entry.name))
    for root in cgroup_roots:
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in procs.read_text().split())
    pids.discard(os.getpid())
    return pids


def _kubepods_cgroups() -> list[Path]:
    return [path for path in Path("/sys/fs/cgroup").glob("*/kubepods") if path.is_dir()] + (
        [Path("/sys/fs/cgroup/kubepods")] if Path("/sys/fs/cgroup/kubepods/cgroup.procs").exists() else [])


def _remove_cgroup_tree(root: Path) -> None:
    # Deepest first: a cgroup directory can only be removed once it has no children.
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def remove_namespaces() -> None:
    for pin in (MNTNS_PIN, NETNS_PIN):
        if pin.exists():
            _run("umount", str(pin), check=False)
    if NODE_RUN.exists():
        _run("umount", str(NODE_RUN), check=False)
        shutil.rmtree(NODE_RUN, ignore_errors=True)


# ---------------------------------------------------------------- configuration


def _write_json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")  # JSON is valid YAML for the kube configs
    return path


def write_node_configs(node: NodePaths) -> None:
    pki = node.cluster.pki
    for user in ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler"):
        lc.write_kubeconfig(node.kubeconfig(user), pki, user)
    (node.root / "containerd.toml").write_text(f"""\
version = 2
root = "{node.root / 'containerd-root'}"
state = "/run/containerd"
[grpc]
  address = "{node.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Without CAP_SYS_RESOURCE in this VM, runc cannot lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{node.root / 'cni'}"
""")
    _write_json(node.root / "cni" / "10-lease-sidecar.conflist", {
        "cniVersion": "1.0.0", "name": "lease-sidecar",
        "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                     "hairpinMode": True,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}}],
    })
    (node.root / "resolv.conf").write_text("# no DNS on the local node\n")
    _write_json(node.root / "kubelet.yaml", {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "cgroupDriver": "cgroupfs",  # no systemd here
        "failCgroupV1": False,  # this machine is cgroup v1 (hybrid)
        "failSwapOn": False,
        "resolvConf": str(node.root / "resolv.conf"),
        "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,  # images cannot be pulled back
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "shutdownGracePeriod": "0s",
        "nodeStatusUpdateFrequency": "2s",
    })
    _write_json(node.root / "kube-proxy.yaml", {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": "iptables", "clusterCIDR": CLUSTER_CIDR, "hostnameOverride": NODE_NAME,
        "clientConnection": {"kubeconfig": str(node.kubeconfig("kube-proxy"))},
        # conntrack limits are machine-wide sysctls; leave them alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "metricsBindAddress": "127.0.0.1:10249", "healthzBindAddress": "127.0.0.1:10256",
    })


def _argv(node: NodePaths, name: str) -> list[str]:
    pki = node.cluster.pki
    binary = str(lc.TOOLS[name].cache_path()) if name in lc.TOOLS else name
    if name == "nsforward":
        return [sys.executable, str(lc.HERE / "nsforward.py"), f"--netns={NETNS_PIN}",
                f"--forward=0.0.0.0:{lc.APISERVER_PORT}=127.0.0.1:{lc.APISERVER_PORT}",
                f"--connect-proxy={node.egress_socket}"]
    if name == "containerd":
        return [*_node_prefix(), shutil.which("containerd") or "containerd",
                f"--config={node.root / 'containerd.toml'}", "--log-level=warn"]
    if name == "kubelet":
        return [*_node_prefix(), binary, f"--config={node.root / 'kubelet.yaml'}",
                f"--kubeconfig={node.kubeconfig('kubelet')}", f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}", "--v=1"]
    if name == "kube-proxy":
        return [*_node_prefix(), binary, f"--config={node.root / 'kube-proxy.yaml'}", "--v=1"]
    if name == "kube-controller-manager":
        return [binary, f"--kubeconfig={node.kubeconfig(name)}",
                f"--authentication-kubeconfig={node.kubeconfig(name)}",
                f"--authorization-kubeconfig={node.kubeconfig(name)}",
                "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={lc.SERVICE_CIDR}", "--allocate-node-cidrs=false",  # CNI owns POD_SUBNET
                "--v=1"]
    if name == "kube-scheduler":
        return [binary, f"--kubeconfig={node.kubeconfig(name)}",
                f"--authentication-kubeconfig={node.kubeconfig(name)}",
                f"--authorization-kubeconfig={node.kubeconfig(name)}",
                "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false", "--v=1"]
    raise KeyError(name)


# ---------------------------------------------------------------- lifecycle


@contextlib.contextmanager
def node_lock() -> Iterator[None]:
    NODE_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(NODE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _wait_socket(path: Path, pid: int, name: str, log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return
        if not lc._pid_alive(pid):
            raise lc.ClusterError(f"{name} exited during start-up; see {log}")
        time.sleep(0.1)
    raise lc.ClusterError(f"{name} did not create {path}; see {log}")


def import_image(tarball: Path, paths: lc.Paths | None = None) -> None:
    """Load an image tarball (docker-archive or OCI) into the node's containerd for the kubelet."""
    node = NodePaths(paths or lc.Paths())
    result = subprocess.run(["ctr", f"--address={node.containerd_socket}", "-n", "k8s.io", "images", "import",
                             str(tarball)], capture_output=True, text=True)
    if result.returncode != 0:
        raise lc.ClusterError(f"importing {tarball} into the node failed: {result.stderr.strip()[-300:]}")


def node_object(paths: lc.Paths) -> dict | None:
    return lc.api_get(paths, f"/api/v1/nodes/{NODE_NAME}")


def is_node_ready(paths: lc.Paths) -> bool:
    found = node_object(paths)
    conditions = (found or {}).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def node_running(paths: lc.Paths) -> bool:
    return (OWNER_FILE.exists() and OWNER_FILE.read_text() == str(paths.root)
            and all(lc.running_pid(paths, name) for name in NODE_PROCESSES))


def _wait_node_ready(paths: lc.Paths, pids: dict[str, int]) -> None:
    deadline = time.monotonic() + NODE_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if is_node_ready(paths):
            return
        for name, pid in pids.items():
            if not lc._pid_alive(pid):
                raise lc.ClusterError(f"{name} exited while the node started; see {paths.log_file(name)}")
        time.sleep(0.5)
    raise lc.ClusterError(f"node {NODE_NAME} not Ready after {NODE_READY_TIMEOUT_S:.0f}s; "
                          f"see {paths.log_file('kubelet')}")


def up(paths: lc.Paths) -> Node:
    """Start the node beside a running control plane (the caller holds the state lock)."""
    node = NodePaths(paths)
    result = Node(paths, paths.kubeconfig, node.containerd_socket)
    if os.geteuid() != 0:
        raise lc.ClusterError("`up --node` needs root: it creates namespaces, mounts and cgroups")
    for shadowed in ("/var/lib", "/var/log", "/run"):
        if paths.root.resolve().is_relative_to(shadowed):
            raise lc.ClusterError(f"LOCAL_CLUSTER_STATE must not be under {shadowed} (the node hides it)")
    if len(str(node.containerd_socket)) > UNIX_SOCKET_PATH_MAX:
        raise lc.ClusterError(f"the state directory's path is too long for containerd's socket "
                              f"({node.containerd_socket}); set a shorter LOCAL_CLUSTER_STATE")
    with node_lock():
        if node_running(paths) and is_node_ready(paths):
            lc.say(f"node {NODE_NAME} already running")
            return result
        if OWNER_FILE.exists() and OWNER_FILE.read_text() != str(paths.root):
            other = OWNER_FILE.read_text()
            raise lc.ClusterError(f"a node from {other} runs on this machine (one per machine); "
                                  f"stop it with LOCAL_CLUSTER_STATE={other} deploy/local/cluster down")
        ensure_packages()
        lc.build_all(NODE_TOOLS)
        pause = pause_image()
        _teardown(paths)
        started = time.monotonic()
        try:
            _start(node, pause)
        except BaseException:
            _teardown(paths)  # nothing half-started stays on the machine; the logs stay in the state dir
            raise
    lc.say(f"node {NODE_NAME} Ready in {time.monotonic() - started:.1f}s (pods reach the apiserver at "
           f"https://{KUBERNETES_SERVICE_IP}:443)")
    return result


def _forget_node(paths: lc.Paths) -> None:
    # The CSINode too: the next kubelet would find it owned by the deleted Node and log errors.
    for api_path in (f"/api/v1/nodes/{NODE_NAME}", f"/apis/storage.k8s.io/v1/csinodes/{NODE_NAME}"):
        lc.api_get(paths, api_path, method="DELETE")


def _start(node: NodePaths, pause: Path) -> None:
    paths = node.cluster
    # A Node object from an earlier run still says Ready: remove it so Ready means this kubelet.
    _forget_node(paths)
    create_namespaces(node)
    write_node_configs(node)
    pids = {}
    for name in NODE_PROCESSES:
        pids[name] = pid = lc._spawn(paths, name, _argv(node, name))
        if name == "containerd":
            _wait_socket(node.containerd_socket, pid, name, paths.log_file(name))
            import_image(pause, paths)
        elif name == "nsforward":
            _wait_socket(node.egress_socket, pid, name, paths.log_file(name))
    _wait_node_ready(paths, pids)


def _teardown(paths: lc.Paths) -> None:
    """Stop every node process and remove what the node left on the machine."""
    node = NodePaths(paths)
    for name in reversed(NODE_PROCESSES):
        lc._stop(paths, name, timeout_s=STOP_TIMEOUT_S)
    # Shims, containers and anything else started inside: by namespace and by pod cgroup.
    for _attempt in range(50):
        pids = _processes_in_node(_kubepods_cgroups())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for root in _kubepods_cgroups():
        _remove_cgroup_tree(root)
    remove_namespaces()
    node.egress_socket.unlink(missing_ok=True)
    _forget_node(paths)  # `kubectl get nodes` tells the truth
    if node.root.exists():
        shutil.rmtree(node.root)


def down(paths: lc.Paths) -> None:
    """Stop the node of this state directory (if it runs here) and clean up after it."""
    with node_lock():
        owner = OWNER_FILE.read_text() if OWNER_FILE.exists() else None
        if owner not in (None, str(paths.root)):
            return  # another state directory's node: not ours to stop
        if owner is None and not NodePaths(paths).root.exists() and not any(
                paths.pid_file(name).exists() for name in NODE_PROCESSES):
            return
        _teardown(paths)


def status(paths: lc.Paths) -> bool:
    healthy = True
    for name in NODE_PROCESSES:
        pid = lc.running_pid(paths, name)
        print(f"{name}: {f'running (pid {pid})' if pid else 'stopped'}")
        healthy = healthy and pid is not None
    ready = is_node_ready(paths)
    print(f"node {NODE_NAME}: {'Ready' if ready else 'not ready'}")
    return healthy and ready


def host_addresses() -> list[str]:
    """The machine's own IPv4 addresses and routes in the node's ranges (10.x): always none."""
    found = [line for line in _run("ip", "-o", "-4", "addr", check=False).stdout.splitlines() if " 10." in line]
    return found + [r for r in _run("ip", "-4", "route", check=False).stdout.splitlines() if r.startswith("10.")]


def leftovers() -> list[str]:
    """What a node could leave on the machine; empty after `down` (tests check this)."""
    found = []
    bridges = _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.strip()
    if bridges:
        found.append(f"bridges: {bridges}")
    chains = [line for table in ("filter", "nat", "mangle")
              for line in _run("iptables", "-t", table, "-S", check=False).stdout.splitlines()
              if line.startswith(("-N CNI-", "-N KUBE-"))]
    if chains:
        found.append(f"iptables chains: {chains}")
    if addresses := host_addresses():
        found.append(f"addresses/routes: {addresses}")
    mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines()
              if any(word in line for word in ("kubelet", "containerd", "lease-sidecar-node", "/run/netns"))]
    if mounts:
        found.append(f"mounts: {mounts}")
    for path in (NODE_RUN, Path("/run/netns"), Path("/var/lib/kubelet"), Path("/var/lib/cni"),
                 Path("/var/log/pods"), Path("/var/log/containers")):
        if path.exists():
            found.append(f"path: {path}")
    if cgroups := _kubepods_cgroups():
        found.append(f"cgroups: {cgroups}")
    if netns := _run("ip", "netns", "list", check=False).stdout.strip():
        found.append(f"netns: {netns}")
    return found
