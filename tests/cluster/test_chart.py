"""The Helm charts and plain manifests: helm lint, every ci/ scenario rendered, the values schema,
and the rendered ServiceAccount and Role on the real API server, where a real sidecar holding
only that ServiceAccount's token must win the election as if it ran in a pod."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.wiring.settings import RunSettings
from tests.cluster import sidecars
from tests.cluster.kube import get_lease, kubectl, service_account_dir
from tests.conftest import ROOT, localcluster

CHARTS = ROOT / "charts"
LIBRARY, EXAMPLE = "lease-sidecar", "lease-sidecar-example"
SCENARIOS = sorted(CHARTS.glob("*/ci/*-values.yaml"))
NEW_KUBE, OLD_KUBE = localcluster.KUBE_VERSION.lstrip("v"), "1.28.0"
RELEASE = "demo"
LEASE = f"{RELEASE}-leader"
SERVICE_ACCOUNT = f"{RELEASE}-lease-sidecar"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
CLUSTER_KINDS = ("ServiceAccount", "Role", "RoleBinding")


# ---------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Runs helm with its cache, config and data in a temporary home (never the user's repos)."""
    try:
        binary = localcluster.build("helm")
    except localcluster.ClusterError as error:
        pytest.fail(f"helm could not be built: {error}", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    env = {name: value for name, value in os.environ.items() if not name.startswith("HELM_")}
    env.update(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
               HELM_DATA_HOME=str(home / "data"), HELM_BIN=str(binary))
    return env


def helm(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([env["HELM_BIN"], *args], capture_output=True, text=True, env=env, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@pytest.fixture(scope="session")
def charts(tmp_path_factory: pytest.TempPathFactory, helm_env: dict[str, str]) -> Path:
    """A copy of charts/ with the example's dependency built (file://../lease-sidecar), so the
    checkout's gitignored charts/*/charts/ and Chart.lock are neither needed nor touched."""
    copy = tmp_path_factory.mktemp("charts") / "charts"
    shutil.copytree(CHARTS, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock", "*.tgz"))
    helm(helm_env, "dependency", "build", str(copy / EXAMPLE))
    assert list((copy / EXAMPLE / "charts").glob("lease-sidecar-*.tgz")), "dependency not packaged"
    return copy


def render(env: dict[str, str], chart: Path, *args: str, namespace: str = "lease-sidecar-demo",
           kube_version: str = NEW_KUBE) -> list[dict[str, Any]]:
    out = helm(env, "template", RELEASE, str(chart), "--namespace", namespace, "--kube-version", kube_version,
               *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def sidecar_of(pod: dict[str, Any], name: str = "lease-sidecar") -> tuple[dict[str, Any], str]:
    """The sidecar container and where it is: 'native' (initContainers) or 'classic'."""
    native = [c for c in pod.get("initContainers") or [] if c["name"] == name]
    classic = [c for c in pod["containers"] if c["name"] == name]
    assert len(native) + len(classic) == 1, f"expected one {name} container: {pod}"
    return (native[0], "native") if native else (classic[0], "classic")


def to_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def ci_id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.name}"


# -------------------------------------------------------------------------- lint, render, schema


LINT_CASES = [(LIBRARY, None), (EXAMPLE, None), *((path.parent.parent.name, path) for path in SCENARIOS)]


@pytest.mark.parametrize(("chart", "values"), LINT_CASES,
                         ids=[ci_id(v) if v else f"{c}/defaults" for c, v in LINT_CASES])
def test_helm_lint_strict(charts: Path, helm_env: dict[str, str], chart: str, values: Path | None) -> None:
    args = ["lint", "--strict", str(charts / chart)]
    if values is not None:
        args += ["--values", str(values)]
    result = helm(helm_env, *args)
    assert "0 chart(s) failed" in result.stdout + result.stderr


def test_library_chart_renders_nothing_by_itself(charts: Path, helm_env: dict[str, str]) -> None:
    assert render(helm_env, charts / LIBRARY) == []


@pytest.mark.parametrize("values", SCENARIOS, ids=ci_id)
def test_every_ci_scenario_renders(charts: Path, helm_env: dict[str, str], values: Path) -> None:
    chart = values.parent.parent.name
    docs = render(helm_env, charts / chart, "--values", str(values))
    assert docs, f"{ci_id(values)} rendered nothing"
    given = yaml.safe_load(values.read_text()) or {}
    sub = given if chart == LIBRARY else given.get("lease-sidecar", {})
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    kinds = sorted(doc["kind"] for doc in docs)
    monitoring = sub.get("monitoring", {})
    for flag, kind in (("podMonitor", "PodMonitor"), ("prometheusRule", "PrometheusRule"),
                       ("dashboard", "ConfigMap")):
        assert (kind in kinds) == bool(monitoring.get(flag, {}).get("enabled")), (flag, kinds)
    if "PrometheusRule" in kinds:
        # files/alerts.yaml is a Helm template (tests/unit/test_alert_rules.py checks what it renders).
        alerts = re.findall(r"^\s*- alert: (\w+)$", (CHARTS / LIBRARY / "files" / "alerts.yaml").read_text(), re.M)
        spec = one(docs, "PrometheusRule")["spec"]
        assert [rule["alert"] for group in spec["groups"] for rule in group["rules"]] == alerts
    if "ConfigMap" in kinds:
        dashboard = one(docs, "ConfigMap")
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(dashboard["data"]["lease-sidecar.json"]) == json.loads(
            (CHARTS / LIBRARY / "files" / "dashboard.json").read_text())
    if "PodMonitor" in kinds:
        spec = one(docs, "PodMonitor")["spec"]
        assert spec["podMetricsEndpoints"][0]["port"] == "lease-metrics"
    if chart == EXAMPLE:
        check_example_pod(docs, sub)


def check_example_pod(docs: list[dict[str, Any]], sub: dict[str, Any]) -> None:
    """The pod-level contract, whatever the scenario."""
    template = one(docs, "Deployment")["spec"]["template"]
    pod = template["spec"]
    name = sub.get("containerName", "lease-sidecar")
    sidecar, mode = sidecar_of(pod, name)
    assert mode == (sub.get("mode") if sub.get("mode") in ("native", "classic") else "native")
    assert (sidecar.get("restartPolicy") == "Always") == (mode == "native")
    ports = {"http": 4040, "metrics": 9464, **sub.get("ports", {})}
    env = {item["name"]: item for item in sidecar["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["LEASE_SIDECAR_LEASE_NAME"]["value"] == sub.get("leaseName", LEASE)
    assert env["LEASE_SIDECAR_HTTP_ADDRESS"]["value"] == f"127.0.0.1:{ports['http']}"
    assert env["LEASE_SIDECAR_METRICS_ADDRESS"]["value"] == f"0.0.0.0:{ports['metrics']}"
    assert sidecar["ports"] == [{"name": "lease-metrics", "containerPort": ports["metrics"], "protocol": "TCP"}]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert sidecar[probe]["httpGet"] == {"path": path, "port": "lease-metrics"}, probe
    # Startup is asked every second (a quick start is seen at once) and tolerates two minutes of a
    # loaded node before the kubelet restarts the sidecar.
    startup = sidecar["startupProbe"]
    assert startup["periodSeconds"] == 1 and startup["periodSeconds"] * startup["failureThreshold"] >= 120, startup
    assert set(sidecar["resources"]) == {"requests", "limits"}
    assert set(sidecar["resources"]["requests"]) == {"cpu", "memory"}
    # No CPU limit unless the values set one (throttling slows the sidecar's start, and so the
    # app's); memory is always bounded.
    wanted_cpu_limit = ((sub.get("resources") or {}).get("limits") or {}).get("cpu")
    assert sidecar["resources"]["limits"].get("cpu") == wanted_cpu_limit
    assert "memory" in sidecar["resources"]["limits"]
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True and isinstance(security["runAsUser"], int)
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # Only the sidecar holds a token; the pod automounts none.
    assert pod["automountServiceAccountToken"] is False
    token_mounts = [(c["name"], m) for c in [*pod.get("initContainers", []), *pod["containers"]]
                    for m in c.get("volumeMounts", []) if m["name"] == "lease-sidecar-token"]
    assert token_mounts == [(name, {"name": "lease-sidecar-token", "mountPath": TOKEN_DIR, "readOnly": True})]
    volumes = {v["name"]: v for v in pod["volumes"]}
    sources = volumes["lease-sidecar-token"]["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["path"] == "token"
    assert sources[1]["configMap"] == {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "emptyDir" in volumes["lease-sidecar-role"]
    app = next(c for c in pod["containers"] if c["name"] == "app")
    role_dir = sub.get("roleDir", {}).get("path", "/var/run/lease-sidecar")
    assert app["volumeMounts"] == [{"name": "lease-sidecar-role", "mountPath": role_dir, "readOnly": True}]
    assert env["LEASE_SIDECAR_ROLE_DIR"]["value"] == role_dir
    account = one(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert one(docs, "RoleBinding")["subjects"][0]["name"] == account["metadata"]["name"]
    labels = template["metadata"]["labels"]
    assert labels["lease-sidecar/lease"] == sub.get("leaseName", LEASE)
    annotations = template["metadata"].get("annotations") or {}
    scrape = sub.get("monitoring", {}).get("podAnnotations", False)
    assert (annotations.get("prometheus.io/port") == str(ports["metrics"])) == scrape


@pytest.mark.parametrize(("kube_version", "mode"), [(NEW_KUBE, "native"), ("1.29.0", "native"),
                                                    (OLD_KUBE, "classic")])
def test_auto_mode_follows_the_cluster_version(charts: Path, helm_env: dict[str, str], kube_version: str,
                                               mode: str) -> None:
    docs = render(helm_env, charts / EXAMPLE, kube_version=kube_version)
    assert sidecar_of(one(docs, "Deployment")["spec"]["template"]["spec"])[1] == mode


@pytest.mark.parametrize(("chart", "args", "expected"), [
    (LIBRARY, ["--set", "bogus=1"], ["additional properties 'bogus' not allowed"]),
    (EXAMPLE, ["--set", "lease-sidecar.bogus=1"], ["lease-sidecar:", "additional properties 'bogus' not allowed"]),
    (EXAMPLE, ["--set", "lease-sidecar.monitoring.podMonitor.enable=true"],
     ["/monitoring/podMonitor", "additional properties 'enable' not allowed"]),
    (EXAMPLE, ["--set", "lease-sidecar.ports.metrics=abc"], ["/ports/metrics", "got string, want integer"]),
    (EXAMPLE, ["--set", "lease-sidecar.standalone=yes"], ["/standalone", "got string, want boolean"]),
    (EXAMPLE, ["--set", "lease-sidecar.election.leaderLeaseTTL=soon"],
     ["/election/leaderLeaseTTL", "'soon' does not match pattern"]),
    (EXAMPLE, ["--set", "lease-sidecar.mode=sidecar"], ["/mode", "value must be one of"]),
    (EXAMPLE, ["--set", "lease-sidecar.cpuSlice=fast"], ["/cpuSlice"]),
    (EXAMPLE, ["--set", "lease-sidecar.cpuSlice=1"], ["/cpuSlice"]),
    (EXAMPLE, ["--set", "lease-sidecar.handoverDrainTimeout=soon"], ["/handoverDrainTimeout"]),
    (EXAMPLE, ["--set", "lease-sidecar.handoverDrainTimeout=-5"], ["/handoverDrainTimeout"]),
    (EXAMPLE, ["--set-string", "lease-sidecar.handoverDrainTimeout=-5s"], ["/handoverDrainTimeout"]),
    (EXAMPLE, ["--set", "replicas=3"], ["lease-sidecar-example:", "additional properties 'replicas' not allowed"]),
])
def test_schema_rejects_unknown_keys_and_wrong_types(charts: Path, helm_env: dict[str, str], chart: str,
                                                     args: list[str], expected: list[str]) -> None:
    result = helm(helm_env, "template", RELEASE, str(charts / chart), *args, check=False)
    assert result.returncode != 0, f"{args} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    for fragment in expected:
        assert fragment in result.stderr, f"{fragment!r} not in: {result.stderr}"


@pytest.mark.parametrize(("args", "expected"), [([], None), (["--set", "lease-sidecar.cpuSlice=0"], "0"),
                                              (["--set", "lease-sidecar.cpuSlice=2ms"], "2ms")])
def test_cpu_slice_reaches_the_sidecar_only_when_set(charts: Path, helm_env: dict[str, str], args: list[str],
                                                      expected: str | None) -> None:
    container = sidecar_of(one(render(helm_env, charts / EXAMPLE, *args), "Deployment")["spec"]["template"]["spec"])[0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env.get("LEASE_SIDECAR_CPU_SLICE") == expected


@pytest.mark.parametrize(("args", "expected", "drain_s"), [
    ([], "10s", 10.0),  # the example's own setting: its app resigns when it sees `draining`
    (["--set", "lease-sidecar.handoverDrainTimeout="], None, 0.0),  # unset: the sidecar's default (off)
    (["--set", "lease-sidecar.handoverDrainTimeout=0"], "0", 0.0),
    (["--set", "lease-sidecar.handoverDrainTimeout=45"], "45", 45.0),
    (["--set", "lease-sidecar.handoverDrainTimeout=1m"], "1m", 60.0),
    (["--set", "lease-sidecar.handoverDrainTimeout=2.5"], "2.5", 2.5),
])
def test_handover_drain_timeout_reaches_the_sidecar_only_when_set(charts: Path, helm_env: dict[str, str],
                                                                   args: list[str], expected: str | None,
                                                                   drain_s: float) -> None:
    container = sidecar_of(one(render(helm_env, charts / EXAMPLE, *args), "Deployment")["spec"]["template"]["spec"])[0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env.get("LEASE_SIDECAR_HANDOVER_DRAIN_TIMEOUT") == expected
    # What the chart passes, the sidecar reads as meant (its settings take the same environment).
    settings = RunSettings(**({} if expected is None else {"handover_drain_timeout": expected}))
    assert settings.handover_drain_timeout == drain_s


def test_helpers_fail_clearly_when_misused(charts: Path, helm_env: dict[str, str]) -> None:
    """Standalone objects and the objects helper together would render everything twice."""
    result = helm(helm_env, "template", RELEASE, str(charts / EXAMPLE), "--set", "lease-sidecar.standalone=true",
                  check=False)
    assert result.returncode != 0
    assert "standalone is true" in result.stderr, result.stderr


def test_aliased_dependency_gets_its_own_names_values_and_files(charts: Path, helm_env: dict[str, str]) -> None:
    """Two elections in one parent chart: the second through an alias and `.Subcharts.<alias>`."""
    parent = charts.parent / "two-elections"
    (parent / "templates").mkdir(parents=True)
    dependency = {"name": LIBRARY, "version": "0.1.0", "repository": f"file://{charts / LIBRARY}"}
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "two-elections", "version": "0.1.0",
        "dependencies": [dependency, {**dependency, "alias": "worker-lease"}]}))
    (parent / "templates" / "objects.yaml").write_text(
        '{{ include "lease-sidecar.objects" . }}\n---\n'
        '{{ include "lease-sidecar.objects" (index .Subcharts "worker-lease") }}\n')
    helm(helm_env, "dependency", "build", str(parent))
    docs = render(helm_env, parent, "--set", "worker-lease.monitoring.dashboard.enabled=true",
                  "--set", "worker-lease.leaseName=jobs")
    roles = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Role"}
    assert roles[f"{RELEASE}-lease-sidecar"]["rules"][0]["resourceNames"] == [LEASE]
    assert roles[f"{RELEASE}-worker-lease"]["rules"][0]["resourceNames"] == ["jobs"]
    assert [doc["metadata"]["name"] for doc in docs if doc["kind"] == "ConfigMap"] == [
        f"{RELEASE}-worker-lease-dashboard"]
    refused = helm(helm_env, "template", RELEASE, str(parent), "--set", "worker-lease.bogus=1", check=False)
    assert "worker-lease:" in refused.stderr and "'bogus' not allowed" in refused.stderr, refused.stderr


def test_every_public_template_documents_its_usage() -> None:
    text = (CHARTS / LIBRARY / "templates" / "_helpers.tpl").read_text()
    for match in re.finditer(r'\{\{-? define "([^"]+)" -?\}\}', text):
        name = match.group(1)
        assert name.startswith("lease-sidecar."), name
        if ".impl." in name or ".internal." in name:
            continue
        comment = text[:match.start()].rstrip().rsplit("{{/*", 1)[-1]
        assert comment.endswith("*/}}") and "Usage" in comment, f"{name} has no Usage comment"


# ------------------------------------------------------------------------- on the API server


def install_rbac(docs: list[dict[str, Any]], namespace: str) -> str:
    """Server-side dry-run of every rendered object, a real apply of the ServiceAccount, Role and
    RoleBinding, then a token for that ServiceAccount from the TokenRequest API."""
    kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=lease-sidecar-test", "-n", namespace,
            "-f", "-", stdin=to_yaml(docs))
    rbac = [doc for doc in docs if doc["kind"] in CLUSTER_KINDS]
    assert sorted(doc["kind"] for doc in rbac) == sorted(CLUSTER_KINDS)
    out = kubectl("apply", "--server-side", "--field-manager=lease-sidecar-test", "-n", namespace, "-f", "-",
                  stdin=to_yaml(rbac))
    assert out.count("serverside-applied") == 3, out
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    return kubectl("create", "token", account, "-n", namespace, "--duration=10m").strip()


@pytest.fixture()
def rendered_example(charts: Path, helm_env: dict[str, str], namespace: str) -> list[dict[str, Any]]:
    return render(helm_env, charts / EXAMPLE, namespace=namespace)


@pytest.mark.parametrize("scenario", ["defaults", "classic-values.yaml"])
def test_rendered_workload_passes_server_side_dry_run(charts: Path, helm_env: dict[str, str], namespace: str,
                                                      scenario: str) -> None:
    args = [] if scenario == "defaults" else ["--values", str(CHARTS / EXAMPLE / "ci" / scenario)]
    docs = render(helm_env, charts / EXAMPLE, *args, namespace=namespace)
    out = kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=lease-sidecar-test",
                  "-n", namespace, "-f", "-", stdin=to_yaml(docs))
    assert "deployment.apps/demo-lease-sidecar-example serverside-applied (server dry run)" in out, out
    created = json.loads(kubectl("create", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-",
                                 stdin=to_yaml([one(docs, "Deployment")])))
    pod = created["spec"]["template"]["spec"]
    expected = "native" if scenario == "defaults" else "classic"
    sidecar, mode = sidecar_of(pod)
    assert mode == expected and (sidecar.get("restartPolicy") == "Always") == (mode == "native")


def test_rendered_service_account_token_wins_the_election_in_cluster_mode(
        rendered_example: list[dict[str, Any]], namespace: str, tmp_path: Path) -> None:
    token = install_rbac(rendered_example, namespace)
    in_cluster = service_account_dir(tmp_path, token, namespace)
    pod = one(rendered_example, "Deployment")["spec"]["template"]["spec"]
    container, _ = sidecar_of(pod)
    # The chart's own settings (lease name, timing, log level) as the pod would get them; the
    # test's sidecars.start() adds loopback addresses and a role dir as flags, which win.
    chart_env = {item["name"]: item["value"] for item in container["env"]
                 if item["name"].startswith("LEASE_SIDECAR_") and "value" in item}
    lease = chart_env["LEASE_SIDECAR_LEASE_NAME"]
    assert lease == LEASE
    env = {**chart_env, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(localcluster.APISERVER_PORT),
           "LEASE_SIDECAR_IN_CLUSTER_DIR": str(in_cluster), "POD_NAMESPACE": namespace}
    sidecar = sidecars.start("demo-pod-0", lease, namespace, tmp_path, kubeconfig=None, env=env,
                             drop_env=("KUBECONFIG",), timing=())
    assert chart_env["LEASE_SIDECAR_APP_HEARTBEAT_TTL"] == "10s"  # the example turns app liveness on
    app = sidecars.start_app(sidecar)
    try:
        # A new election's first leader comes one lease TTL (the chart's 15 s) after no Lease was seen.
        sidecars.wait_for(lambda: (sidecar.leader() or {}).get("is_leader") is True, timeout=35)
        body = sidecar.leader()
        assert body["holder"] == "demo-pod-0" and body["lease"] == f"{namespace}/{lease}"
        held = get_lease(namespace, lease)
        assert held and held["spec"]["holderIdentity"] == "demo-pod-0"
        assert (sidecar.role_dir / "role").read_text() == "leader\n"
        assert sidecar.terminate() == 0
        released = get_lease(namespace, lease)
        assert released and released["spec"].get("holderIdentity") in (None, ""), released["spec"]
    finally:
        app.kill()
        sidecars.stop_all([sidecar])
    logs = sidecar.logs()
    assert "Forbidden" not in logs and " 403" not in logs, logs[-3000:]


def test_members_view_runs_on_the_chart_token_and_its_role_is_no_wider(
        charts: Path, helm_env: dict[str, str], namespace: str, tmp_path: Path) -> None:
    """--members with only the rendered Role: the member Lease is written, listed and removed;
    the Role adds list, watch, update and delete on leases (nothing narrower is expressible: pod
    names are generated, RBAC matches no labels or prefixes) and nothing else."""
    docs = render(helm_env, charts / EXAMPLE, "--set", "lease-sidecar.members=true", namespace=namespace)
    token = install_rbac(docs, namespace)
    granted = [("list", "leases"), ("watch", "leases"), ("update", "leases/other"), ("delete", "leases/other"),
               ("create", "leases"), ("get", f"leases/{LEASE}")]
    denied = [("get", "leases/other"), ("patch", "leases/other"), ("deletecollection", "leases"),
              ("get", "secrets"), ("list", "pods"), ("create", "configmaps")]
    assert [g for g in granted if not can_i(token, namespace, *g)] == []
    assert [d for d in denied if can_i(token, namespace, *d)] == []
    in_cluster = service_account_dir(tmp_path, token, namespace)
    container, _ = sidecar_of(one(docs, "Deployment")["spec"]["template"]["spec"])
    chart_env = {item["name"]: item["value"] for item in container["env"]
                 if item["name"].startswith("LEASE_SIDECAR_") and "value" in item}
    assert chart_env["LEASE_SIDECAR_MEMBERS"] == "true"
    env = {**chart_env, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(localcluster.APISERVER_PORT),
           "LEASE_SIDECAR_IN_CLUSTER_DIR": str(in_cluster), "POD_NAMESPACE": namespace,
           "LEASE_SIDECAR_HEARTBEAT_INTERVAL": "1", "LEASE_SIDECAR_HEARTBEAT_TTL": "3"}
    sidecar = sidecars.start("demo-pod-1", LEASE, namespace, tmp_path, kubeconfig=None, env=env,
                             drop_env=("KUBECONFIG",), timing=())
    try:
        member = f"{LEASE}-member-demo-pod-1"
        sidecars.wait_for(lambda: [m["identity"] for m in sidecar.get("/members")[1]["members"]] == ["demo-pod-1"],
                          timeout=15, interval=0.1)
        record = get_lease(namespace, member)
        assert record and record["metadata"]["labels"] == {"lease-sidecar.io/election": LEASE}
        first_version = record["metadata"]["resourceVersion"]
        sidecars.wait_for(lambda: get_lease(namespace, member)["metadata"]["resourceVersion"] != first_version,
                          timeout=5, interval=0.2)  # renewed with update
        assert sidecar.terminate() == 0
        assert get_lease(namespace, member) is None  # deleted on the way out
    finally:
        sidecars.stop_all([sidecar])
    logs = sidecar.logs()
    assert "Forbidden" not in logs and " 403" not in logs, logs[-3000:]


def can_i(token: str, namespace: str, *args: str) -> bool:
    out = kubectl("auth", "can-i", *args, "-n", namespace, check=False, token=token).strip()
    answer = out.splitlines()[0] if out else ""
    assert answer in ("yes", "no"), out
    return answer == "yes"


def test_rendered_role_grants_exactly_the_lease(rendered_example: list[dict[str, Any]], namespace: str) -> None:
    token = install_rbac(rendered_example, namespace)
    kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "other"}, "spec": {}}))
    allowed = [("get", f"leases/{LEASE}"), ("update", f"leases/{LEASE}"), ("watch", f"leases/{LEASE}"),
               ("list", f"leases/{LEASE}"), ("create", "leases")]
    denied = [("get", "secrets"), ("list", "secrets"), ("get", "pods"), ("list", "pods"), ("create", "pods"),
              ("get", "configmaps"), ("get", "leases/other"), ("update", "leases/other"), ("list", "leases"),
              ("watch", "leases"), ("delete", f"leases/{LEASE}"), ("patch", f"leases/{LEASE}"),
              ("delete", "leases/other"), ("deletecollection", "leases"), ("get", "leases.coordination.k8s.io/x")]
    assert [a for a in allowed if not can_i(token, namespace, *a)] == []
    assert [d for d in denied if can_i(token, namespace, *d)] == []
    # What the sidecar really does: list (and watch) by field selector on the name passes the
    # name-limited rule; a plain list does not.
    kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE}, "spec": {}}))
    listed = json.loads(kubectl("get", "leases", "-n", namespace, f"--field-selector=metadata.name={LEASE}",
                                "-o", "json", token=token))
    assert [item["metadata"]["name"] for item in listed["items"]] == [LEASE]
    refused = kubectl("get", "leases", "-n", namespace, "-o", "name", check=False, token=token)
    assert "Forbidden" in refused and 'cannot list resource "leases"' in refused, refused
    refused = kubectl("get", "lease", "other", "-n", namespace, check=False, token=token)
    assert "Forbidden" in refused, refused


# --------------------------------------------------------------------------- plain manifests


def kustomized() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(kubectl("kustomize", str(ROOT / "deploy" / "manifests"))) if doc]


def test_plain_manifests_match_the_chart(charts: Path, helm_env: dict[str, str]) -> None:
    """deploy/manifests is the example chart's native-sidecar render, minus Helm's labels."""
    chart = render(helm_env, charts / EXAMPLE, "--values", str(CHARTS / EXAMPLE / "ci" / "native-values.yaml"),
                   "--set", "lease-sidecar.monitoring.podAnnotations=false")
    plain = kustomized()
    assert one(plain, "Namespace")["metadata"]["name"] == "lease-sidecar-demo"
    for kind in CLUSTER_KINDS:
        assert one(plain, kind)["metadata"]["namespace"] == "lease-sidecar-demo", kind
    assert one(plain, "Role")["rules"] == one(chart, "Role")["rules"]
    assert one(plain, "RoleBinding")["subjects"] == one(chart, "RoleBinding")["subjects"]
    assert one(plain, "RoleBinding")["roleRef"] == one(chart, "RoleBinding")["roleRef"]
    assert one(plain, "ServiceAccount")["automountServiceAccountToken"] is False
    chart_pod = one(chart, "Deployment")["spec"]["template"]
    plain_pod = one(plain, "Deployment")["spec"]["template"]
    assert plain_pod["metadata"]["labels"]["lease-sidecar/lease"] == chart_pod["metadata"]["labels"][
        "lease-sidecar/lease"]
    for key in ("serviceAccountName", "automountServiceAccountToken", "securityContext", "initContainers",
                "volumes"):
        assert plain_pod["spec"][key] == chart_pod["spec"][key], key
    chart_app, plain_app = chart_pod["spec"]["containers"][0], plain_pod["spec"]["containers"][0]
    for key in ("image", "command", "args", "env", "volumeMounts", "securityContext", "resources"):
        assert plain_app[key] == chart_app[key], key


def test_plain_manifests_apply(namespace: str) -> None:
    docs = [doc for doc in kustomized() if doc["kind"] != "Namespace"]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
    kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=lease-sidecar-test", "-f", "-",
            stdin=to_yaml(docs))
    rbac = [doc for doc in docs if doc["kind"] in CLUSTER_KINDS]
    kubectl("apply", "--server-side", "--field-manager=lease-sidecar-test", "-f", "-", stdin=to_yaml(rbac))
    token = kubectl("create", "token", SERVICE_ACCOUNT, "-n", namespace, "--duration=10m").strip()
    assert can_i(token, namespace, "update", f"leases/{LEASE}")
    assert not can_i(token, namespace, "get", "secrets")
