"""The chart's alert rules and dashboard: promtool checks and unit tests, and the metric-name contract.

files/alerts.yaml is a Helm template (each alert's `for:`, windows and thresholds come from
monitoring.prometheusRule.alerts): the rules checked here are the chart's PrometheusRule as
`helm template` renders it, with the defaults and with every setting the tests use
(ALERT_SETTINGS). promtool and helm are built from the Go module proxy (pinned in
deploy/local/tools/) by the same code as `deploy/local/cluster build`; if they cannot be built
these tests fail, they never skip.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.config import ElectionConfig
from sidecar.core.election import Elector, Moment
from sidecar.core.liveness import AppLiveness
from sidecar.publish.metrics import ElectionMetrics

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import localcluster  # noqa: E402

LIBRARY_CHART = ROOT / "charts" / "lease-sidecar"
ALERTS = LIBRARY_CHART / "files" / "alerts.yaml"
DASHBOARD = LIBRARY_CHART / "files" / "dashboard.json"
RULES_DIR = ROOT / "tests" / "unit" / "rules"
RULE_TESTS = sorted(RULES_DIR.glob("*_test.yaml"))
# The name the rule tests give the rendered rules file in their `rule_files:`.
RENDERED_RULES = "alerts.rendered.yaml"
# Settings of monitoring.prometheusRule.alerts the tests use besides the defaults: the node tests'
# short ones (tests/node/test_monitoring.py fires every alert with them in real pods).
ALERT_SETTINGS = {"defaults": None, "fast": RULES_DIR / "fast-alerts-values.yaml"}
ALERT_NAMES = re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(), re.MULTILINE)

# The exported names (as Prometheus stores them) and their labels, before Prometheus adds pod/instance/job.
LEASE = frozenset({"namespace", "name"})
CONTRACT: dict[str, frozenset[str]] = {
    "lease_sidecar_heartbeats_sent_total": LEASE,
    "lease_sidecar_leader_elections_won_total": LEASE,
    "lease_sidecar_leader_elections_lost_total": LEASE,
    "lease_sidecar_lease_renewals_total": LEASE,
    "lease_sidecar_lease_renewal_failures_total": LEASE,
    "lease_sidecar_failovers_detected_total": LEASE,
    "lease_sidecar_is_leader": LEASE,
    "lease_sidecar_fencing_token": LEASE,
    "lease_sidecar_leader_since_seconds": LEASE,
    "lease_sidecar_lease_valid_seconds": LEASE,
    "lease_sidecar_api_request_duration_seconds": LEASE | {"verb", "result"},
    "lease_sidecar_watch_restarts_total": LEASE,
    "lease_sidecar_event_loop_lag_seconds": frozenset(),
    "lease_sidecar_gc_pause_seconds": frozenset({"generation"}),
    "lease_sidecar_app_alive": LEASE,
    "lease_sidecar_app_heartbeat_age_seconds": LEASE,
    "lease_sidecar_app_heartbeats_total": LEASE,
    "lease_sidecar_info": frozenset({"version", "identity", "namespace", "lease"}),
    "leader_election_master_status": frozenset({"name"}),
}
HISTOGRAMS = {"lease_sidecar_api_request_duration_seconds", "lease_sidecar_event_loop_lag_seconds",
              "lease_sidecar_gc_pause_seconds"}
SEVERITIES = {"critical", "warning", "info"}


# ---------------------------------------------------------------- promtool


@pytest.fixture(scope="module")
def promtool() -> Path:
    try:
        return localcluster.build("promtool")
    except localcluster.ClusterError as error:
        pytest.fail(f"promtool could not be built: {error}", pytrace=False)


def run_promtool(promtool: Path, *args: str, cwd: Path = ROOT) -> str:
    result = subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    output = f"$ promtool {' '.join(args)}\n{result.stdout}{result.stderr}"
    assert result.returncode == 0, output
    return output


@functools.cache
def rendered_rules(setting: str = "defaults") -> dict[str, Any]:
    """The chart's PrometheusRule spec (a plain rules file), rendered by helm with `setting`."""
    try:
        helm = localcluster.build("helm")
    except localcluster.ClusterError as error:
        pytest.fail(f"helm could not be built: {error}", pytrace=False)
    argv = [str(helm), "template", "rules", str(LIBRARY_CHART), "--set", "standalone=true",
            "--set", "monitoring.prometheusRule.enabled=true"]
    values = ALERT_SETTINGS[setting]
    if values is not None:
        argv += ["--values", str(values)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rules = [doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "PrometheusRule"]
    assert len(rules) == 1, "the chart should render one PrometheusRule"
    return rules[0]["spec"]


def write_rendered(setting: str, directory: Path) -> Path:
    path = directory / RENDERED_RULES
    path.write_text(yaml.safe_dump(rendered_rules(setting), sort_keys=False))
    return path


@pytest.mark.parametrize("setting", sorted(ALERT_SETTINGS))
def test_promtool_check_rules(promtool: Path, setting: str, tmp_path: Path) -> None:
    path = write_rendered(setting, tmp_path)
    output = run_promtool(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(path))
    assert "SUCCESS" in output, output


def test_rule_test_files_exist() -> None:
    assert RULE_TESTS, "no promtool rule tests in tests/unit/rules/"


@pytest.mark.parametrize("rule_test", RULE_TESTS, ids=[path.name for path in RULE_TESTS])
def test_promtool_test_rules(promtool: Path, rule_test: Path, tmp_path: Path) -> None:
    # The rule tests name the rendered file; they run beside a copy rendered with the defaults.
    assert yaml.safe_load(rule_test.read_text())["rule_files"] == [RENDERED_RULES], rule_test.name
    write_rendered("defaults", tmp_path)
    (tmp_path / rule_test.name).write_text(rule_test.read_text())
    run_promtool(promtool, "test", "rules", rule_test.name, cwd=tmp_path)


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = set(alert_rules())
    assert alerts - fired == set(), "alerts never shown firing in tests/unit/rules/"
    assert alerts - silent == set(), "alerts never shown staying silent in tests/unit/rules/"


# ---------------------------------------------------------------- the rules file itself


def alert_rules(setting: str = "defaults") -> dict[str, dict[str, Any]]:
    document = rendered_rules(setting)
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"] if "alert" in rule}


def test_rendered_rules_are_plain_prometheus_rules() -> None:
    for setting in ALERT_SETTINGS:
        document = rendered_rules(setting)
        assert set(document) == {"groups"}, "a PrometheusRule spec holds only `groups:`"
        assert sorted(alert_rules(setting)) == sorted(ALERT_NAMES), setting
        text = yaml.safe_dump(document)
        assert "{{ ." not in text and "<<prometheus-template>>" not in text, "Helm left something unrendered"
        # Prometheus' own templates survive Helm's.
        assert "{{ $labels.namespace }}" in text


def test_every_alert_setting_is_a_value_and_used() -> None:
    """alerts.yaml reads `{{ .<alert>.<setting> }}`: each such pair is a default in values.yaml, and
    each default is read (a value nothing reads would silently do nothing)."""
    defaults = yaml.safe_load((LIBRARY_CHART / "values.yaml").read_text())["monitoring"]["prometheusRule"]["alerts"]
    used = set(re.findall(r"\{\{ \.(\w+)\.(\w+) \}\}", ALERTS.read_text()))
    declared = {(alert, key) for alert, settings in defaults.items() for key in settings}
    assert used == declared


ALERT_KEYS = {"noLeader": "LeaseSidecarNoLeader", "metricsMissing": "LeaseSidecarMetricsMissing",
              "multipleLeaders": "LeaseSidecarMultipleLeaders", "leadershipFlapping": "LeaseSidecarLeadershipFlapping",
              "renewalErrors": "LeaseSidecarRenewalErrors", "renewalLatency": "LeaseSidecarRenewalLatencyHigh",
              "watchRestarting": "LeaseSidecarWatchRestarting", "appNotHeartbeating": "LeaseSidecarAppNotHeartbeating"}


def test_fast_setting_reaches_every_alert() -> None:
    fast = yaml.safe_load(ALERT_SETTINGS["fast"].read_text())["monitoring"]["prometheusRule"]["alerts"]
    assert sorted(ALERT_KEYS.values()) == sorted(ALERT_NAMES) and set(fast) == set(ALERT_KEYS)
    rules = alert_rules("fast")
    for key, settings in fast.items():
        rule = rules[ALERT_KEYS[key]]
        assert rule["for"] == settings["for"], key
        for setting, value in settings.items():
            if setting in ("window", "lookback"):
                assert f"[{value}]" in rule["expr"], (key, setting)


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_alert_has_severity_and_annotations(alert: str) -> None:
    rule = alert_rules()[alert]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and "\n" not in annotations["summary"].strip()
    assert "runbook" in annotations["description"].lower(), "the description should say what to do"
    assert alert.startswith("LeaseSidecar")


def test_paging_alerts_wait_out_scrape_artefacts() -> None:
    # Sidecars report at scrape time and pods are scraped at different moments: a critical alert
    # evaluated on the sum over pods needs a `for:` of at least two 30s scrape intervals.
    for name, rule in alert_rules().items():
        if rule["labels"]["severity"] == "critical":
            assert _seconds(rule["for"]) >= 60, name


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h|d)", duration):
        total += int(number) * units[unit]
    return total


# ---------------------------------------------------------------- dashboard


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_parses_and_is_templated() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "lease"} <= set(variables)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert "$namespace" in target["expr"] and "$lease" in target["expr"], panel["title"]


def test_dashboard_queries_are_valid_promql(promtool: Path, tmp_path: Path) -> None:
    # promtool parses PromQL only inside rules: each query becomes a recording rule, Grafana's variables filled in.
    grafana_vars = {"$__rate_interval": "1m", "$__range": "1h", "$namespace": "shop", "$lease": "orders-leader"}
    rules = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in grafana_vars.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"unknown Grafana variable in {panel['title']!r}: {expr}"
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", str(path))


def test_dashboard_has_the_promised_panels() -> None:
    exprs = " ".join(target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", []))
    for needle in ("lease_sidecar_is_leader", "lease_sidecar_leader_elections_won_total",
                   "lease_sidecar_fencing_token", "histogram_quantile(0.5", "histogram_quantile(0.99",
                   "lease_sidecar_lease_renewal_failures_total", "lease_sidecar_watch_restarts_total",
                   "lease_sidecar_lease_valid_seconds"):
        assert needle in exprs


# ---------------------------------------------------------------- metric names against the contract

_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or labels."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group().lower() in _NOT_METRICS:
            continue
        names.add(match.group())
    return names


def contract_name(name: str) -> str | None:
    if name in CONTRACT:
        return name
    base, _, suffix = name.rpartition("_")
    if base in HISTOGRAMS and suffix in {"bucket", "count", "sum"}:
        return base
    return None


def referenced_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used, over alert exprs, dashboard queries and the rule tests."""
    uses: dict[str, set[str]] = {}

    def add(names: set[str], where: str) -> None:
        for name in names:
            uses.setdefault(name, set()).add(where)

    for alert, rule in alert_rules().items():
        add(metric_names(rule["expr"]), f"alerts.yaml {alert}")
    board = dashboard()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            add(metric_names(target["expr"]), f"dashboard panel {panel['title']!r}")
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            add(set(re.findall(r"label_values\(\s*([\w:]+)", var["definition"])), f"dashboard variable {var['name']}")
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for series in case.get("input_series", []):
                add(metric_names(series["series"]), f"{path.name} input series")
            for check in case.get("promql_expr_test", []):
                add(metric_names(check["expr"]), f"{path.name} promql_expr_test")
    return uses


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (namespace, le) (rate(x_bucket{verb="update", a=~"b|c"}[$__rate_interval])))'
        " > 2.5 and on (name) group_left foo unless bar offset 5m"
    ) == {"x_bucket", "foo", "bar"}


def test_dashboard_and_alerts_use_only_contract_metrics() -> None:
    uses = referenced_metrics()
    unknown = {name: sorted(where) for name, where in uses.items() if contract_name(name) is None}
    assert not unknown, f"metric names not in the contract (sidecar/metrics.py): {unknown}"
    used = {contract_name(name) for name in uses}
    assert {"lease_sidecar_is_leader", "lease_sidecar_leader_elections_won_total",
            "lease_sidecar_lease_renewal_failures_total", "lease_sidecar_api_request_duration_seconds"} <= used


def test_label_names_in_alert_groupings_exist() -> None:
    # `by (...)` may only use the sidecar's own labels or `le` (pod/instance/job exist only after a scrape).
    allowed = set().union(*CONTRACT.values()) | {"le", "pod", "instance", "job"}
    for alert, rule in alert_rules().items():
        for group in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]):
            labels = {label.strip() for label in group.split(",") if label.strip()}
            assert labels <= allowed, (alert, labels - allowed)


class _FixedClock:
    def now(self) -> Moment:
        return Moment(1000.0, datetime(2026, 1, 1, tzinfo=UTC))


def test_contract_is_what_the_sidecar_exports() -> None:
    registry = CollectorRegistry()
    metrics = ElectionMetrics(registry, Elector("pod-0", ElectionConfig()), _FixedClock(), "shop", "orders-leader",
                              "pod-0")
    metrics.observe_request("update", "ok", 0.01)  # labelled children exist only once used
    metrics.count_watch_restart()
    metrics.observe_gc_pause(0, 0.0001)
    metrics.watch_app(AppLiveness(ttl_s=5))
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            name = contract_name(sample.name) or sample.name
            exported.setdefault(name, set()).update(set(sample.labels) - {"le"})
    for name, labels in CONTRACT.items():
        assert name in exported, f"{name} is not exported by sidecar/metrics.py"
        assert exported[name] == labels, name
