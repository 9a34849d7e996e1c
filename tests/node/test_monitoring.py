"""Prometheus scrapes the sidecars for real: both servers of `deploy/local/monitoring` (sd: scrape
annotations and kubernetes_sd_configs; operator: prometheus-operator with the chart's PodMonitor and
PrometheusRule) on the local node, several releases of the example chart, and every alert of the
chart fired by a real failure and resolved after it, in real pods.

The alerts run with the node tests' short settings (tests/unit/rules/fast-alerts-values.yaml,
checked by promtool in tests/unit/test_alert_rules.py); both servers scrape and evaluate every 5 s.
The failures are injected into three releases at once (the node's tests share one xdist worker):

  app    its app SIGSTOPped (ctr, through the node's containerd)     NoLeader, AppNotHeartbeating
         then repeated POST /leader/resign (kubectl exec in the app) LeadershipFlapping
  net    its connections to the apiserver refused (iptables and      RenewalErrors, WatchRestarting
         conntrack inside the node's network namespace only), then
         its packets dropped (requests time out)                     RenewalLatencyHigh
  quiet  leader deleted, rollout restart, resign hand-over, then     MultipleLeaders stays silent
         scaled to zero and back                                     MetricsMissing

Servers are reached by `kubectl port-forward` only (monitoring.PrometheusApi). If a server or the
operator cannot start, the tests fail; they never skip. Times to fire and to resolve are printed as
`[node figures]`; only what cannot flake is asserted (an alert fires and resolves within generous
bounds).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import monitoring  # deploy/local/monitoring.py: tests/conftest.py puts deploy/local on sys.path
import pytest
import yaml

from tests.conftest import ROOT, local_node, localcluster
from tests.node.example import (  # noqa: F401 - fixtures
    CI_VALUES,
    example_chart,
    example_release,
    image,
    pods_image,
    report,
)

Release = example_release.Release
INTERVAL = "5s"  # both servers' scrape and evaluation interval, and the PodMonitors'
FAST_ALERTS = ROOT / "tests" / "unit" / "rules" / "fast-alerts-values.yaml"
# Pods per release: two where a hand-over is the point, one where a lone candidate shows the failure
# as well (fewer sidecars starting at once on the node's two cores).
REPLICAS = {"quiet": 2, "app": 1, "net": 1}
INSTALL_TIMEOUT_S = 420.0  # a CPU-starved node starts Python slowly: the sidecars may need restarts
INSTALL_STAGGER_S = 15.0  # between the installs' starts: the sidecars' start-ups do not all coincide
SERVERS = monitoring.INSTANCES
SCENARIO_TIMEOUT_S = 240.0  # an alert that neither fires nor resolves within this is a failure
POLL_S = 1.0
# Where the failover's range queries are saved for docs/plot_failover_metrics.py.
FAILOVER_DATA = Path(os.environ.get("FAILOVER_METRICS_DATA", "/tmp/lease-sidecar-failover-metrics.json"))
RESIGN_SCRIPT = """
import json, os, urllib.request
request = urllib.request.Request(os.environ["LEASE_SIDECAR_URL"] + "/leader/resign?sit_out=0", data=b"")
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=5))))
"""
# Fast elections so that failures show within seconds: TTL 10 s, renewal every 2 s, app TTL 4 s.
RELEASE_SETS = [
    "heartbeatSeconds=1",
    "lease-sidecar.election.leaderLeaseTTL=10s", "lease-sidecar.election.leaderRenewalInterval=2s",
    "lease-sidecar.app.heartbeatTTL=4s", "lease-sidecar.election.heartbeatInterval=1s",
    "lease-sidecar.election.heartbeatTTL=3s",
    # An idle watch is re-opened after this: a watch cut off quietly breaks within it.
    "lease-sidecar.election.failoverTimeout=15s",
    f"lease-sidecar.monitoring.podMonitor.interval={INTERVAL}",
]
ROLES = tuple(REPLICAS)


# ---------------------------------------------------------------- alerts seen over time


@dataclass
class AlertLog:
    """Polls both servers' /api/v1/alerts; remembers when each (server, alert, namespace) was first
    seen firing and when it was last seen so (monotonic seconds)."""

    apis: dict[str, monitoring.PrometheusApi]
    firing: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    pending: set[tuple[str, str, str]] = field(default_factory=set)
    current: set[tuple[str, str, str]] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        while not self.stop.is_set():
            now_firing: set[tuple[str, str, str]] = set()
            for server, api in self.apis.items():
                try:
                    alerts = api.alerts()
                except monitoring.MonitoringError as error:
                    self.errors.append(str(error))
                    continue
                for alert in alerts:
                    key = (server, alert["labels"]["alertname"], alert["labels"].get("namespace", ""))
                    if alert["state"] == "firing":
                        now_firing.add(key)
                    else:
                        self.pending.add(key)
            seen_at = time.monotonic()
            with self.lock:
                for key in now_firing:
                    self.firing.setdefault(key, [seen_at, seen_at])[1] = seen_at
                self.current = now_firing
            self.stop.wait(POLL_S)

    def wait(self, alert: str, namespace: str, firing: bool, since_s: float,
             timeout_s: float = SCENARIO_TIMEOUT_S) -> float:
        """Seconds from `since_s` until `alert` for `namespace` is firing (or no longer firing) on
        both servers."""
        deadline = since_s + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                states = [(server, alert, namespace) in self.current for server in self.apis]
            if all(state == firing for state in states):
                return time.monotonic() - since_s
            time.sleep(POLL_S / 2)
        with self.lock:
            current = sorted(key for key in self.current if key[2] == namespace)
        pytest.fail(f"{alert} in {namespace} not {'firing' if firing else 'resolved'} on both servers within "
                    f"{timeout_s:.0f}s; firing there now: {current}; poll errors: {self.errors[-3:]}", pytrace=False)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def servers(node: Any, pods_image: str) -> dict[str, str]:  # noqa: F811
    """Both Prometheus servers and the operator, started by `deploy/local/monitoring up`."""
    try:
        return monitoring.up(INTERVAL, rules_values=[FAST_ALERTS])
    except (monitoring.MonitoringError, localcluster.ClusterError, image.ImageError,
            example_release.ReleaseError) as error:
        pytest.fail(f"Prometheus or the operator could not start: {error}", pytrace=False)


def _release(chart: Path, role: str, rules: bool) -> Release:
    namespace = f"mon-{role}-{uuid.uuid4().hex[:6]}"
    chosen = Release(example_release.Api(), namespace, role, chart, values=[CI_VALUES / "monitoring-values.yaml"])
    chosen.sets = [*RELEASE_SETS, f"replicaCount={REPLICAS[role]}",
                   f"lease-sidecar.monitoring.prometheusRule.enabled={str(rules).lower()}",
                   # One dashboard ConfigMap is enough (it covers every lease).
                   f"lease-sidecar.monitoring.dashboard.enabled={str(rules).lower()}"]
    # The PrometheusRule of the one release that has it carries the tests' short alert settings.
    chosen.values.append(_nested_fast_alerts(chart.parent.parent))
    return chosen


def _nested_fast_alerts(workdir: Path) -> Path:
    """FAST_ALERTS under `lease-sidecar:`, as the example chart takes them."""
    path = workdir / "fast-alerts-example-values.yaml"
    path.write_text(yaml.safe_dump({"lease-sidecar": yaml.safe_load(FAST_ALERTS.read_text())}))
    return path


@pytest.fixture(scope="module")
def releases(example_chart: Path, servers: dict[str, str]) -> Iterator[dict[str, Release]]:  # noqa: F811
    chosen = {role: _release(example_chart, role, rules=(role == "quiet")) for role in ROLES}
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(len(chosen)) as pool:
            outcomes = {}
            for role, release in chosen.items():
                outcomes[role] = pool.submit(release.install, INSTALL_TIMEOUT_S)
                time.sleep(INSTALL_STAGGER_S)
            errors = {role: outcome.exception() for role, outcome in outcomes.items() if outcome.exception()}
        if errors:
            pytest.fail(f"helm install of the example failed: {errors}", pytrace=False)
        print(f"[monitoring] {len(chosen)} releases installed in {time.monotonic() - started:.0f}s")
        yield chosen
    finally:
        with ThreadPoolExecutor(len(chosen)) as pool:
            list(pool.map(lambda release: release.uninstall(), chosen.values()))


@pytest.fixture(scope="module")
def apis(servers: dict[str, str]) -> Iterator[dict[str, monitoring.PrometheusApi]]:
    opened: dict[str, monitoring.PrometheusApi] = {}
    try:
        for server in SERVERS:
            opened[server] = monitoring.PrometheusApi(server)
            opened[server].open()
        yield opened
    except monitoring.MonitoringError as error:
        pytest.fail(str(error), pytrace=False)
    finally:
        for api in opened.values():
            api.close()


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = SCENARIO_TIMEOUT_S,
               poll_s: float = POLL_S) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(poll_s)
    pytest.fail(f"{what}: not within {timeout_s:.0f}s (last: {last!r})", pytrace=False)


# ---------------------------------------------------------------- the servers find everything


def test_both_servers_scrape_every_sidecar_with_the_labels_rules_use(
        apis: dict[str, monitoring.PrometheusApi], releases: dict[str, Release],
        report: Callable[..., None]) -> None:  # noqa: F811
    seen: dict[str, float] = {}
    for server, api in apis.items():
        started = time.monotonic()
        for role, release in releases.items():
            def all_up(api: monitoring.PrometheusApi = api, release: Release = release, role: str = role) -> Any:
                pods = {p["metadata"]["name"] for p in release.pods()}
                series = api.query(f'lease_sidecar_is_leader{{namespace="{release.namespace}"}}')
                scraped = {s["metric"].get("pod") for s in series}
                return len(pods) == REPLICAS[role] and scraped == pods and series
            series = wait_until(f"{server}: every sidecar of {release.namespace} scraped", all_up)
            for sample in series:
                labels = sample["metric"]
                # The Lease's namespace and name (the sidecar's own labels, honoured), and the pod.
                assert labels["namespace"] == release.namespace and labels["name"] == release.lease, labels
                assert labels["pod"] and labels["job"] and labels["instance"], labels
        seen[server] = round(time.monotonic() - started, 1)
        namespaces = {release.namespace for release in releases.values()}
        targets = [t for t in api.targets() if t["discoveredLabels"].get("__meta_kubernetes_namespace") in namespaces]
        assert all(t["health"] == "up" for t in targets), [t for t in targets if t["health"] != "up"]
        # Only the named metrics port of each pod: one target per sidecar.
        assert len(targets) == sum(REPLICAS.values()), [t["scrapeUrl"] for t in targets]
    report("monitoring: every sidecar scraped (after install)", seconds=seen)


def test_both_servers_load_every_rule_group_of_the_chart(apis: dict[str, monitoring.PrometheusApi],
                                                         releases: dict[str, Release]) -> None:
    rules = monitoring.rendered_rules([FAST_ALERTS], [])
    expected = {group["name"]: sorted(rule["alert"] for rule in group["rules"]) for group in rules["groups"]}
    for server, api in apis.items():
        def loaded(api: monitoring.PrometheusApi = api) -> Any:
            groups = {g["name"]: sorted(r["name"] for r in g["rules"]) for g in api.rule_groups()}
            return groups if groups == expected else None
        wait_until(f"{server}: the chart's rule groups loaded", loaded, timeout_s=180)
        health = [(r["name"], r.get("lastError")) for g in api.rule_groups() for r in g["rules"]
                  if r.get("health") not in ("ok", "unknown")]
        assert not health, f"{server}: rules with errors: {health}"


def test_dashboard_decodes_strictly_into_the_grafana_foundation_sdk_types(tmp_path: Path) -> None:
    checker = localcluster.build("dashboard-check")
    dashboard = ROOT / "charts" / "lease-sidecar" / "files" / "dashboard.json"
    good = subprocess.run([str(checker), str(dashboard)], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    queries = [json.loads(line) for line in good.stdout.splitlines()]
    assert len(queries) >= 10 and all(q["expr"] for q in queries)
    # The decoding is strict: an unknown field anywhere is refused.
    board = json.loads(dashboard.read_text())
    board["panels"][1]["options"]["notAnOption"] = True
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps(board))
    bad = subprocess.run([str(checker), str(bad_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "notAnOption" in bad.stderr, bad.stderr


# ---------------------------------------------------------------- failures, all at once


def pod_ip(release: Release, pod: str) -> str:
    found = release.api.request("GET", f"/api/v1/namespaces/{release.namespace}/pods/{pod}")
    assert found is not None and found["status"].get("podIP"), f"pod {pod} has no IP"
    return found["status"]["podIP"]


def in_node(*argv: str) -> subprocess.CompletedProcess[str]:
    """A command inside the node's network namespace only."""
    return subprocess.run(["nsenter", f"--net={local_node.NETNS_PIN}", "--", *argv], capture_output=True, text=True,
                          timeout=30)


def drop_rule(ip: str, action: str) -> None:
    """-I / -D: the pod's packets to the apiserver dropped (they reach it at the node IP, after
    kube-proxy's DNAT of the `kubernetes` Service): its requests time out."""
    rule = ["-s", ip, "-p", "tcp", "--dport", str(localcluster.APISERVER_PORT), "-j", "DROP"]
    result = in_node("iptables", "-w", "5", action, "INPUT", *(["1"] if action == "-I" else []), *rule)
    assert result.returncode == 0, f"iptables {action}: {result.stderr}"


def refuse_rule(ip: str, action: str) -> None:
    """-I / -D: the pod's connections to the `kubernetes` Service sent to a closed port of the node
    instead, and its tracked connections forgotten, so that open ones are reset too: its requests
    fail at once (connection refused or reset). A REJECT in INPUT would not do: its reset to a
    connection being DNATed is not translated back, and the pod only sees a timeout."""
    rule = ["-s", ip, "-d", localcluster.KUBERNETES_SERVICE_IP, "-p", "tcp", "--dport", "443",
            "-j", "DNAT", "--to-destination", f"{localcluster.NODE_IP}:1"]
    result = in_node("iptables", "-w", "5", "-t", "nat", action, "PREROUTING", *(["1"] if action == "-I" else []),
                     *rule)
    assert result.returncode == 0, f"iptables -t nat {action}: {result.stderr}"
    in_node("conntrack", "-D", "-s", ip)  # exit 1 when there was none: fine


def signal_apps(release: Release, signal_name: str) -> None:
    for pod in release.pods():
        statuses = pod["status"]["containerStatuses"]
        status = next(s for s in statuses if s["name"] == example_release.APP_CONTAINER)
        result = subprocess.run(["ctr", f"--address={image.default_containerd_address()}", "-n", "k8s.io", "tasks",
                                 "kill", "--signal", signal_name, status["containerID"].removeprefix("containerd://")],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


def resign(release: Release, pod: str) -> None:
    result = example_release.kubectl("exec", "-n", release.namespace, pod, "-c", example_release.APP_CONTAINER,
                                     "--", "python", "-c", RESIGN_SCRIPT, check=False, timeout_s=30)
    assert result.returncode == 0, result.stderr


def new_term(release: Release, previous_acquire_time: str) -> tuple[str, str] | None:
    spec = (release.api.lease(release.namespace, release.lease) or {}).get("spec") or {}
    holder, acquired = spec.get("holderIdentity") or "", spec.get("acquireTime") or ""
    return (holder, acquired) if holder and acquired != previous_acquire_time else None


def one_leader(release: Release) -> str:
    try:
        return release.wait_for_one_leader(REPLICAS[release.name])
    except example_release.ReleaseError as error:
        pytest.fail(str(error), pytrace=False)


@dataclass
class Timing:
    alert: str
    release: str
    fire_s: float  # failure injected -> firing on both servers
    resolve_s: float  # failure removed -> no longer firing on both servers


def hung(release: Release, log: AlertLog) -> list[Timing]:
    one_leader(release)
    injected = time.monotonic()
    signal_apps(release, "SIGSTOP")
    try:
        fire = {alert: log.wait(alert, release.namespace, True, injected)
                for alert in ("LeaseSidecarNoLeader", "LeaseSidecarAppNotHeartbeating")}
    finally:
        signal_apps(release, "SIGCONT")
    removed = time.monotonic()
    return [Timing(alert, release.name, fire[alert], log.wait(alert, release.namespace, False, removed))
            for alert in fire]


def flap(release: Release, log: AlertLog) -> list[Timing]:
    alert = "LeaseSidecarLeadershipFlapping"
    one_leader(release)
    injected = time.monotonic()
    acquired = ""
    for _ in range(6):
        # A new term (the Lease's acquireTime moves; with one pod the holder stays the same),
        # read from the Lease, not from every pod: the resigns must fit in the window.
        holder, acquired = wait_until("a new term after a resign", lambda old=acquired: new_term(release, old),
                                      timeout_s=60, poll_s=0.2)
        resign(release, holder)
    fire = log.wait(alert, release.namespace, True, injected)
    removed = time.monotonic()
    return [Timing(alert, release.name, fire, log.wait(alert, release.namespace, False, removed))]


def cut_off(release: Release, log: AlertLog, rule: Callable[[str, str], None],
            alerts: tuple[str, ...]) -> list[Timing]:
    """Cuts the (lone) leader off the apiserver until the alerts fire."""
    for alert in alerts:  # a fault injected before into this release may still show
        log.wait(alert, release.namespace, False, time.monotonic())
    ip = pod_ip(release, one_leader(release))
    injected = time.monotonic()
    rule(ip, "-I")
    try:
        fire = {alert: log.wait(alert, release.namespace, True, injected) for alert in alerts}
    finally:
        rule(ip, "-D")
    removed = time.monotonic()
    return [Timing(alert, release.name, fire[alert], log.wait(alert, release.namespace, False, removed))
            for alert in alerts]


def leader_gauge_moves(release: Release, api: monitoring.PrometheusApi,
                       watch: example_release.LeaseWatch) -> dict[str, float]:
    """Deletes the leader pod; seconds from the Lease's new holder to the operator server's
    lease_sidecar_is_leader showing that pod as leader."""
    leader = one_leader(release)
    deleted_at = time.time()
    failover = example_release.delete_leader(release, watch, leader)
    seen = wait_until("the new leader in lease_sidecar_is_leader", lambda: api.query(
        f'lease_sidecar_is_leader{{namespace="{release.namespace}", pod="{failover.successor}"}} == 1'),
        timeout_s=60, poll_s=0.25)
    gauge_at = time.monotonic()
    assert seen
    taken_at = next(c.at_s for c in watch.since(0.0) if c.holder == failover.successor)
    return {"delete_to_new_holder_s": round(failover.new_leader_s, 2),
            "new_holder_to_gauge_s": round(gauge_at - taken_at, 2), "deleted_at": deleted_at}


def quiet(release: Release, log: AlertLog, api: monitoring.PrometheusApi) -> tuple[list[Timing], dict[str, Any]]:
    figures: dict[str, Any] = {"events": {}}
    with example_release.LeaseWatch(release.api, release.namespace, release.lease) as watch:
        t0 = time.time()
        figures["failover"] = leader_gauge_moves(release, api, watch)
        figures["events"]["leader pod deleted"] = figures["failover"].pop("deleted_at")
        time.sleep(10)  # two scrapes of the new leader before the next change, for the picture
        figures["events"]["rollout restart"] = time.time()
        figures["rollout_s"] = round(example_release.rollout_restart(release, watch, REPLICAS["quiet"]).duration_s, 1)
        leader = one_leader(release)
        figures["events"]["POST /leader/resign"] = time.time()
        resign(release, leader)
        one_leader(release)
        time.sleep(10)
        figures["failover_window"] = [t0 - 15, time.time()]
    alert = "LeaseSidecarMetricsMissing"
    injected = time.monotonic()
    example_release.kubectl("scale", "-n", release.namespace, f"deployment/{release.deployment}", "--replicas=0")
    try:
        fire = log.wait(alert, release.namespace, True, injected)
    finally:
        example_release.kubectl("scale", "-n", release.namespace, f"deployment/{release.deployment}",
                                f"--replicas={REPLICAS['quiet']}")
    removed = time.monotonic()
    return [Timing(alert, "quiet", fire, log.wait(alert, release.namespace, False, removed))], figures


def save_failover_ranges(api: monitoring.PrometheusApi, release: Release, window: list[float],
                         events: dict[str, float]) -> None:
    """The failover's series as the operator server stores them, for docs/plot_failover_metrics.py."""
    start, end = window
    data: dict[str, Any] = {"namespace": release.namespace, "start": start, "end": end, "events": events,
                            "scrape_interval_s": float(INTERVAL.removesuffix("s")), "series": {}}
    for metric in ("lease_sidecar_is_leader", "lease_sidecar_lease_valid_seconds", "lease_sidecar_fencing_token"):
        result = api.query_range(f'{metric}{{namespace="{release.namespace}"}}', start, end, 1.0)
        data["series"][metric] = [{"pod": s["metric"]["pod"], "values": s["values"]} for s in result]
    FAILOVER_DATA.write_text(json.dumps(data))


def test_every_alert_fires_on_a_real_failure_and_resolves(
        apis: dict[str, monitoring.PrometheusApi], releases: dict[str, Release],
        report: Callable[..., None]) -> None:  # noqa: F811
    # Every release scraped and the rules loaded first (the tests above wait for that).
    test_both_servers_load_every_rule_group_of_the_chart(apis, releases)
    started_wall = time.time()
    log = AlertLog({server: monitoring.PrometheusApi(server) for server in SERVERS})
    for api in log.apis.values():
        api.open()
    poller = threading.Thread(target=log.run, daemon=True)
    poller.start()
    try:
        with ThreadPoolExecutor(len(ROLES)) as pool:
            jobs = {
                "app": pool.submit(lambda: hung(releases["app"], log) + flap(releases["app"], log)),
                # Refused connections: fast failures, retried until the renew deadline, and a watch
                # that cannot reconnect. Then dropped packets: requests time out (slow updates).
                "net": pool.submit(lambda: cut_off(releases["net"], log, refuse_rule,
                                                   ("LeaseSidecarRenewalErrors", "LeaseSidecarWatchRestarting"))
                                   + cut_off(releases["net"], log, drop_rule, ("LeaseSidecarRenewalLatencyHigh",))),
                "quiet": pool.submit(quiet, releases["quiet"], log, apis["operator"]),
            }
            timings: list[Timing] = []
            for role, job in jobs.items():
                outcome = job.result()
                if role == "quiet":
                    quiet_timings, figures = outcome
                    timings += quiet_timings
                else:
                    timings += outcome
    finally:
        log.stop.set()
        poller.join(10)
        for api in log.apis.values():
            api.close()
    report("monitoring: alert fired and resolved (s)", **{
        f"{t.alert.removeprefix('LeaseSidecar')}@{t.release}": {"fire": round(t.fire_s, 1),
                                                                "resolve": round(t.resolve_s, 1)}
        for t in timings})
    report("monitoring: failover seen in Prometheus", **figures["failover"], rollout_s=figures["rollout_s"])
    save_failover_ranges(apis["operator"], releases["quiet"], figures["failover_window"], figures["events"])

    fired = {t.alert for t in timings}
    alerts = {rule["alert"] for group in monitoring.rendered_rules([FAST_ALERTS], [])["groups"]
              for rule in group["rules"]}
    assert alerts - fired == {"LeaseSidecarMultipleLeaders"}, alerts - fired

    # "More than one leader" stayed silent through all of it: deletion, rollout, resigns, cut-offs.
    multiple = [key for key in log.firing if key[1] == "LeaseSidecarMultipleLeaders"]
    assert not multiple, f"LeaseSidecarMultipleLeaders fired: {multiple}"
    pending = sorted(key for key in log.pending if key[1] == "LeaseSidecarMultipleLeaders")
    # Every instant (1 s apart) at which the stored samples sum to more than one leader.
    overlaps = apis["operator"].query_range(
        'sum by (namespace, name) (lease_sidecar_is_leader{namespace=~"mon-.*"}) > 1',
        started_wall - 30, time.time(), 1.0)
    report("monitoring: more than one leader", pending=pending,
           instants_above_one={s["metric"]["namespace"]: [round(float(at) - started_wall, 1) for at, _ in s["values"]]
                               for s in overlaps},
           events_s={name: round(at - started_wall, 1) for name, at in figures["events"].items()})


def test_every_dashboard_query_answers_after_a_failover(apis: dict[str, monitoring.PrometheusApi],
                                                        releases: dict[str, Release]) -> None:
    checker = localcluster.build("dashboard-check")
    dashboard = ROOT / "charts" / "lease-sidecar" / "files" / "dashboard.json"
    decoded = subprocess.run([str(checker), str(dashboard)], capture_output=True, text=True, timeout=60)
    assert decoded.returncode == 0, decoded.stderr
    release = releases["quiet"]
    variables = {"$__rate_interval": "1m", "$namespace": release.namespace, "$lease": release.lease}
    empty = []
    for line in decoded.stdout.splitlines():
        query = json.loads(line)
        expr = query["expr"]
        for variable, value in variables.items():
            expr = expr.replace(variable, value)
        for server, api in apis.items():
            # Over the last 10 minutes: they hold the failover of the test above.
            answers = api.query(f"max_over_time(({expr})[10m:5s])")
            if not answers:
                empty.append((server, query["panel"], query["refId"], expr))
    assert not empty, f"dashboard queries with no answer: {empty}"


def test_monitoring_status_reports_both_servers() -> None:
    result = subprocess.run([str(ROOT / "deploy" / "local" / "monitoring"), "status"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for server in SERVERS:
        assert f"{server}: pod " in result.stdout, result.stdout

