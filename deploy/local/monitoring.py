"""Prometheus on the local node, both ways users run it: `deploy/local/monitoring up|down|status`.

- `sd`: a Prometheus server (Deployment prometheus-sd) with its own ServiceAccount, allowed only
  get/list/watch on pods cluster-wide, discovering pods with `kubernetes_sd_configs` (role pod)
  through the chart's scrape annotations: the scrape configuration of docs/prometheus-scrape.yaml,
  verbatim. Its rule file is the chart's PrometheusRule rendered by `helm template`.
- `operator`: prometheus-operator with its config reloader and CRDs, and a `Prometheus` resource
  (StatefulSet prometheus-operator) selecting every PodMonitor and PrometheusRule labelled
  `release: prometheus` in any namespace (charts/lease-sidecar-example/ci/monitoring-values.yaml
  labels the chart's so, as kube-prometheus-stack expects).

Both servers' pods carry app.kubernetes.io/name=prometheus, are told apart by
app.kubernetes.io/instance (sd, operator) and serve on 9090. Nothing here dials a pod address:
`PrometheusApi` reaches a server through `kubectl port-forward`.

Everything is built on this machine: prometheus + promtool (one `go build`, Kubernetes discovery
only), the operator + its reloader (one `go build`), pinned in deploy/local/tools/; each binary
is static and goes into a one-layer image written here as a docker-archive (no base image, no
registry), imported into the node's containerd. Stdlib only, like localcluster.py.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import example_release  # noqa: E402
import image  # noqa: E402
import localcluster  # noqa: E402

NAMESPACE = "monitoring"
PORT = 9090
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
INSTANCES = ("sd", "operator")
# kube-prometheus-stack's convention: its Prometheus selects objects labelled with its release.
SELECTOR_LABELS = {"release": "prometheus"}
PROMETHEUS_VERSION = "v3.15.0"  # = module v0.315.0 in tools/prometheus/go.mod
OPERATOR_VERSION = "v0.85.0"  # = tools/prometheus-operator/go.mod
OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
SCRAPE_CONFIG = ROOT / "docs" / "prometheus-scrape.yaml"
LIBRARY_CHART = ROOT / "charts" / "lease-sidecar"
DEFAULT_INTERVAL = "10s"
READY_TIMEOUT_S = 300.0
NOBODY = 65534


class MonitoringError(Exception):
    """A failure worth one line to the user (no traceback)."""


def say(message: str) -> None:
    print(f"[monitoring] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class Image:
    ref: str
    tool: str  # the localcluster tool whose binary it runs
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    workdir: str = "/"


IMAGES = {
    "prometheus": Image(f"docker.io/library/lease-sidecar-prometheus:{PROMETHEUS_VERSION}", "prometheus",
                        ("/bin/prometheus",),
                        ("--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"),
                        "/prometheus"),
    "operator": Image(f"docker.io/library/lease-sidecar-prometheus-operator:{OPERATOR_VERSION}",
                      "prometheus-operator", ("/bin/operator",)),
    "reloader": Image(f"docker.io/library/lease-sidecar-prometheus-config-reloader:{OPERATOR_VERSION}",
                      "prometheus-config-reloader", ("/bin/prometheus-config-reloader",)),
}


def _tar_layer(binary: Path) -> bytes:
    """The one layer: the static binary, nobody's passwd line, and writable /prometheus and /tmp."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as layer:
        def add(name: str, data: bytes | None = None, mode: int = 0o755, owner: int = 0) -> None:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, owner, owner, 0
            if data is None:
                info.type = tarfile.DIRTYPE
                layer.addfile(info)
            else:
                info.size = len(data)
                layer.addfile(info, io.BytesIO(data))

        for directory in ("bin", "etc", "etc/prometheus"):
            add(directory)
        add("tmp", mode=0o1777)
        add("prometheus", mode=0o775, owner=NOBODY)
        add("etc/passwd", f"root:x:0:0:root:/:/bin/false\nnobody:x:{NOBODY}:{NOBODY}:nobody:/:/bin/false\n"
            .encode(), mode=0o644)
        add("etc/group", f"root:x:0:\nnogroup:x:{NOBODY}:\n".encode(), mode=0o644)
        add(f"bin/{binary.name}", binary.read_bytes())
    return out.getvalue()


def image_tarball(name: str) -> Path:
    """A docker-archive of the image (cached by the binary's content and the image's settings)."""
    spec = IMAGES[name]
    binary = localcluster.build(spec.tool)
    digest = hashlib.sha256(binary.read_bytes())
    digest.update(json.dumps([spec.ref, spec.entrypoint, spec.cmd, spec.workdir, "layer-v1"]).encode())
    target = image.IMAGES_DIR / f"monitoring-{name}-{digest.hexdigest()[:16]}.tar"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    layer = _tar_layer(binary)
    layer_id = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": list(spec.entrypoint), "Cmd": list(spec.cmd), "WorkingDir": spec.workdir,
                   "User": f"{NOBODY}:{NOBODY}", "Env": ["PATH=/bin"], "ExposedPorts": {f"{PORT}/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [{"created_by": f"deploy/local/monitoring.py: {binary.name} built from the Go module proxy"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{config_id}.json", "RepoTags": [spec.ref], "Layers": [f"{layer_id}/layer.tar"]}]
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w") as archive:
        for member, data in ((f"{layer_id}/layer.tar", layer), (f"{config_id}.json", config_bytes),
                             ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    partial.rename(target)
    say(f"image {spec.ref} written in {time.monotonic() - started:.1f}s ({target.stat().st_size >> 20} MiB)")
    for old in image.IMAGES_DIR.glob(f"monitoring-{name}-*.tar"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


def build_all() -> dict[str, Path]:
    """The binaries (the two `go build`s run one after the other: 2 cores gain nothing from both
    at once) and their images."""
    return {name: image_tarball(name) for name in IMAGES}


def load_images(address: str) -> None:
    for tarball in build_all().values():
        image.import_into_containerd(tarball, address)


# ---------------------------------------------------------------- kubectl and helm


def kubectl(*args: str, stdin: str | None = None, timeout_s: float = 120.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=timeout_s,
                            env=example_release.tool_env())
    if check and result.returncode != 0:
        raise MonitoringError(f"kubectl {' '.join(args[:3])} failed: {result.stderr.strip()[-600:]}")
    return result


def apply(objects: list[dict[str, Any]]) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))


def operator_module_dir() -> Path:
    result = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", OPERATOR_MODULE],
                            cwd=localcluster.TOOLS_DIR / "prometheus-operator", capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0 or not result.stdout.strip():
        raise MonitoringError(f"cannot find {OPERATOR_MODULE} in the module cache: {result.stderr.strip()}")
    return Path(result.stdout.strip())


def rendered_rules(values: list[Path], sets: list[str]) -> dict[str, Any]:
    """The chart's PrometheusRule spec (a rules file) as `helm template` renders it."""
    argv = ["helm", "template", "rules", str(LIBRARY_CHART), "--set", "standalone=true",
            "--set", "monitoring.prometheusRule.enabled=true"]
    for path in values:
        argv += ["--values", str(path)]
    for assignment in sets:
        argv += ["--set", assignment]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=example_release.tool_env())
    if result.returncode != 0:
        raise MonitoringError(f"helm template of the rules failed: {result.stderr.strip()[-600:]}")
    for document in result.stdout.split("\n---"):
        if "kind: PrometheusRule" in document:
            # kubectl reads the YAML (the standard library has no YAML parser).
            as_json = kubectl("create", "--dry-run=client", "-o", "json", "-f", "-", stdin=document)
            return json.loads(as_json.stdout)["spec"]
    raise MonitoringError("helm template rendered no PrometheusRule")


# ---------------------------------------------------------------- the objects


def _labels(instance: str) -> dict[str, str]:
    return {NAME_LABEL: "prometheus", INSTANCE_LABEL: instance}


def _pod_reader(name: str) -> list[dict[str, Any]]:
    """A ServiceAccount that may get/list/watch pods in every namespace, and nothing else."""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]},
    ]


RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
              "capabilities": {"drop": ["ALL"]}}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": NOBODY, "runAsGroup": NOBODY, "fsGroup": NOBODY,
                "seccompProfile": {"type": "RuntimeDefault"}}


def sd_objects(interval: str, rules: dict[str, Any]) -> list[dict[str, Any]]:
    scrape_configs = SCRAPE_CONFIG.read_text()  # its top-level `scrape_configs:`, verbatim
    config = (f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
              "rule_files:\n  - /etc/prometheus/rules/*.yaml\n" + scrape_configs)
    rules_text = json.dumps(rules, indent=1)  # JSON is YAML
    checksum = hashlib.sha256((config + rules_text).encode()).hexdigest()[:16]
    name = "prometheus-sd"
    labels = _labels("sd")
    container = {
        "name": "prometheus", "image": IMAGES["prometheus"].ref, "imagePullPolicy": "IfNotPresent",
        "args": ["--config.file=/etc/prometheus/config/prometheus.yml", "--storage.tsdb.path=/prometheus",
                 "--storage.tsdb.retention.time=1d", "--web.enable-lifecycle",
                 f"--web.listen-address=:{PORT}"],
        "ports": [{"name": "web", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/-/ready", "port": "web"}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": RESTRICTED,
        "volumeMounts": [{"name": "config", "mountPath": "/etc/prometheus/config"},
                         {"name": "rules", "mountPath": "/etc/prometheus/rules"},
                         {"name": "data", "mountPath": "/prometheus"}],
    }
    return [
        *_pod_reader(name),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-config", "namespace": NAMESPACE},
         "data": {"prometheus.yml": config}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-rules", "namespace": NAMESPACE},
         "data": {"lease-sidecar.yaml": rules_text}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels, "annotations": {"checksum/config": checksum}},
                               "spec": {"serviceAccountName": name, "securityContext": POD_SECURITY,
                                        "containers": [container],
                                        "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}},
                                                    {"name": "rules", "configMap": {"name": f"{name}-rules"}},
                                                    {"name": "data", "emptyDir": {}}]}}}},
    ]


def operator_objects(interval: str) -> list[dict[str, Any]]:
    name = "prometheus-operator"
    labels = {NAME_LABEL: "prometheus-operator"}
    container = {
        "name": "operator", "image": IMAGES["operator"].ref, "imagePullPolicy": "IfNotPresent",
        "args": [f"--prometheus-config-reloader={IMAGES['reloader'].ref}", "--kubelet-service=",
                 "--log-level=info", "--web.listen-address=:8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": RESTRICTED,
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}},
        # The ClusterRole is upstream's (example/rbac in the module); bound to this namespace's account.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE,
                                                                     "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"serviceAccountName": name, "securityContext": POD_SECURITY,
                                        "containers": [container]}}}},
        *_pod_reader("prometheus-operator-prometheus"),
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
         "metadata": {"name": "operator", "namespace": NAMESPACE},
         "spec": {
             "image": IMAGES["prometheus"].ref, "version": PROMETHEUS_VERSION, "replicas": 1,
             "imagePullPolicy": "IfNotPresent",
             "serviceAccountName": "prometheus-operator-prometheus",
             "scrapeInterval": interval, "evaluationInterval": interval,
             "podMonitorSelector": {"matchLabels": SELECTOR_LABELS}, "podMonitorNamespaceSelector": {},
             "ruleSelector": {"matchLabels": SELECTOR_LABELS}, "ruleNamespaceSelector": {},
             "retention": "1d",
             "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
             "securityContext": POD_SECURITY,
             "podMetadata": {"labels": _labels("operator")},
         }},
    ]


# ---------------------------------------------------------------- up, down, status


def up(interval: str = DEFAULT_INTERVAL, rules_values: list[Path] | None = None,
       rules_sets: list[str] | None = None) -> dict[str, str]:
    """Everything, idempotent: the node (started if missing), images, CRDs, both servers Ready.
    Returns {instance: Ready pod}."""
    started = time.monotonic()
    import node

    ready = node.node_up()
    load_images(str(ready.containerd_socket))
    crds = operator_module_dir() / "example" / "prometheus-operator-crd"
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds), timeout_s=300)
    kubectl("wait", "--for=condition=Established", "--timeout=120s", "-f", str(crds), timeout_s=180)
    kubectl("create", "namespace", NAMESPACE, check=False)
    kubectl("apply", "-f", str(operator_module_dir() / "example" / "rbac" / "prometheus-operator"
                                / "prometheus-operator-cluster-role.yaml"))
    rules = rendered_rules(rules_values or [], rules_sets or [])
    apply(sd_objects(interval, rules))
    apply(operator_objects(interval))
    pods = wait_ready(READY_TIMEOUT_S)
    say(f"up in {time.monotonic() - started:.0f}s ({', '.join(f'{k}: {v}' for k, v in pods.items())}); "
        f"reach a server with `kubectl -n {NAMESPACE} port-forward pod/<pod> {PORT}`")
    return pods


def server_pods(instance: str) -> list[dict[str, Any]]:
    selector = f"{NAME_LABEL}=prometheus,{INSTANCE_LABEL}={instance}"
    result = kubectl("get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "json", check=False)
    if result.returncode != 0:
        return []
    return [pod for pod in json.loads(result.stdout)["items"] if "deletionTimestamp" not in pod["metadata"]]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def wait_ready(timeout_s: float) -> dict[str, str]:
    """Waits until each instance has exactly one pod and it is Ready; returns {instance: pod name}."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        found = {}
        for instance in INSTANCES:
            pods = server_pods(instance)
            if len(pods) == 1 and _ready(pods[0]):
                found[instance] = pods[0]["metadata"]["name"]
        if len(found) == len(INSTANCES):
            return found
        time.sleep(2)
    events = kubectl("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp", check=False).stdout[-2000:]
    raise MonitoringError(f"Prometheus not Ready within {timeout_s:.0f}s (ready: {found}); events:\n{events}")


def down() -> None:
    kubectl("delete", "prometheus", "--all", "-n", NAMESPACE, "--ignore-not-found", "--wait=true", check=False,
            timeout_s=120)
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", timeout_s=300, check=False)
    for name in ("prometheus-sd", "prometheus-operator", "prometheus-operator-prometheus"):
        kubectl("delete", "clusterrolebinding", name, "--ignore-not-found", check=False)
        kubectl("delete", "clusterrole", name, "--ignore-not-found", check=False)
    crds = operator_module_dir() / "example" / "prometheus-operator-crd"
    kubectl("delete", "-f", str(crds), "--ignore-not-found", timeout_s=300, check=False)
    say("removed")


def status() -> bool:
    healthy = True
    for instance in INSTANCES:
        ready = [pod["metadata"]["name"] for pod in server_pods(instance) if _ready(pod)]
        if not ready:
            print(f"{instance}: not running")
            healthy = False
            continue
        with PrometheusApi(instance) as api:
            targets = api.targets()
            up_targets = [t for t in targets if t["health"] == "up"]
            firing = sorted({a["labels"]["alertname"] for a in api.alerts() if a["state"] == "firing"})
            print(f"{instance}: pod {ready[0]}, {len(up_targets)}/{len(targets)} targets up, "
                  f"{len(api.rule_groups())} rule groups, firing: {', '.join(firing) or 'nothing'}")
    return healthy


# ---------------------------------------------------------------- the HTTP API, through port-forward


class PrometheusApi:
    """A server's HTTP API through `kubectl port-forward` to its pod (never a pod address)."""

    def __init__(self, instance: str, timeout_s: float = 60.0) -> None:
        self.instance = instance
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[str] | None = None
        self.base = ""
        self.pod = ""

    def __enter__(self) -> PrometheusApi:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            pods = [pod["metadata"]["name"] for pod in server_pods(self.instance) if _ready(pod)]
            if pods:
                break
            if time.monotonic() > deadline:
                raise MonitoringError(f"no Ready Prometheus pod with {INSTANCE_LABEL}={self.instance}")
            time.sleep(1)
        self.pod = pods[0]
        self.process = subprocess.Popen(
            ["kubectl", "port-forward", "-n", NAMESPACE, f"pod/{self.pod}", f":{PORT}", "--address=127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=example_release.tool_env())
        line = self.process.stdout.readline() if self.process.stdout else ""
        if "Forwarding from 127.0.0.1:" not in line:
            self.process.kill()
            error = self.process.stderr.read() if self.process.stderr else ""
            self.process = None
            raise MonitoringError(f"port-forward to {self.pod} failed: {line.strip()} {error.strip()[-300:]}")
        local_port = int(line.split("127.0.0.1:", 1)[1].split()[0])
        self.base = f"http://127.0.0.1:{local_port}"
        # Drain the forwarder's output so it never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(self.process,), daemon=True).start()

    @staticmethod
    def _drain(process: subprocess.Popen[str]) -> None:
        if process.stdout:
            for _ in process.stdout:
                pass

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def get(self, path: str, params: dict[str, Any] | None = None, timeout_s: float = 30.0) -> Any:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        for attempt in range(3):
            try:
                with urllib.request.urlopen(self.base + path + query, timeout=timeout_s) as reply:
                    body = json.load(reply)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                if attempt == 2:
                    raise MonitoringError(f"{self.instance}: GET {path}: {error}") from None
                if self.process is None or self.process.poll() is not None:
                    self.close()
                    self.open()  # the forwarder died (the pod restarted): a new one
                time.sleep(1)
        if body.get("status") != "success":
            raise MonitoringError(f"{self.instance}: GET {path}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.get("/api/v1/query", params)["result"]

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        return self.get("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                "step": f"{step_s:g}"})["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/targets", {"state": "active"})["activeTargets"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/rules")["groups"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/alerts")["alerts"]


# ---------------------------------------------------------------- command line


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="monitoring", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="build, install and start both Prometheus servers (and the node)")
    up_parser.add_argument("--interval", default=DEFAULT_INTERVAL,
                           help=f"scrape and rule evaluation interval of both servers (default {DEFAULT_INTERVAL})")
    up_parser.add_argument("--rules-values", action="append", type=Path, default=[],
                           help="values file of the library chart for the rules the sd server loads (repeatable)")
    sub.add_parser("down", help="remove both servers, the operator and its CRDs")
    sub.add_parser("status", help="both servers' targets, rule groups and firing alerts")
    sub.add_parser("build", help="build the binaries and images only; print the image tarballs")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(args.interval, args.rules_values)
        elif args.command == "down":
            down()
        elif args.command == "build":
            for tarball in build_all().values():
                print(tarball)
        else:
            return 0 if status() else 1
    except (MonitoringError, localcluster.ClusterError, image.ImageError, example_release.ReleaseError) as error:
        print(f"monitoring: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
