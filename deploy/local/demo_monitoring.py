#!/usr/bin/env python3
"""`make demo-monitoring`: Prometheus scraping the example chart in real pods on the local node.

Installs what is missing (`deploy/local/monitoring up`: the node, both Prometheus servers and the
operator), then a release of the example chart with charts/lease-sidecar-example/ci/monitoring-values.yaml
and short alert settings, and shows, from each server's own API (through `kubectl port-forward`):
the sidecars' targets; the leader gauge moving when the leader pod is deleted; and
LeaseSidecarNoLeader firing while every app is stopped (SIGSTOP) and resolving once they run again.

    deploy/local/demo_monitoring.py          # then uninstalls the release (the servers stay)
    KEEP=1 deploy/local/demo_monitoring.py   # leave the release running to look around

Stdlib only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import example_release  # noqa: E402
import image  # noqa: E402
import monitoring  # noqa: E402

NAMESPACE = os.environ.get("NAMESPACE", "lease-sidecar-demo-monitoring")
RELEASE = "demo"
REPLICAS = 3
KEEP = os.environ.get("KEEP") == "1"
INTERVAL = "5s"
# The demo's alert settings (values of the library chart): two scrape intervals of `for:` instead of
# minutes. The release's PrometheusRule carries them to the operator's server; the sd server's rules
# are rendered by `monitoring.up` and need them too (with the default 2m it fired some 130 s late).
ALERT_SETS = ["monitoring.prometheusRule.alerts.noLeader.for=10s"]
SETS = [
    "heartbeatSeconds=1", "lease-sidecar.app.heartbeatTTL=4s", "lease-sidecar.election.heartbeatInterval=1s",
    "lease-sidecar.election.heartbeatTTL=3s",
    "lease-sidecar.election.leaderLeaseTTL=10s", "lease-sidecar.election.leaderRenewalInterval=2s",
    f"lease-sidecar.monitoring.podMonitor.interval={INTERVAL}",
    *(f"lease-sidecar.{assignment}" for assignment in ALERT_SETS),
]
STEP_S = 5  # the picture of the leader gauge: one column per scrape interval
ALERT = "LeaseSidecarNoLeader"


def say(message: str) -> None:
    print(f"[demo-monitoring] {message}", flush=True)


def wait(what: str, check: Callable[[], Any], timeout_s: float = 180.0, poll_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(poll_s)
    raise monitoring.MonitoringError(f"{what}: not within {timeout_s:.0f}s")


def show_targets(api: monitoring.PrometheusApi) -> None:
    # The pod's namespace as discovered: the sd job (docs/prometheus-scrape.yaml) keeps no
    # `namespace` target label (the sidecar's own, the Lease's, is honoured instead).
    targets = [t for t in api.targets() if t["discoveredLabels"].get("__meta_kubernetes_namespace") == NAMESPACE]
    say(f"{api.instance}: {len(targets)} targets of {NAMESPACE}")
    for target in sorted(targets, key=lambda t: t["labels"]["pod"]):
        print(f"    {target['health']:<5} {target['scrapeUrl']:<40} pod={target['labels']['pod']} "
              f"job={target['labels']['job']}")


def leader_gauge(api: monitoring.PrometheusApi) -> dict[str, str]:
    series = api.query(f'lease_sidecar_is_leader{{namespace="{NAMESPACE}"}}')
    return {s["metric"]["pod"]: s["value"][1] for s in series}


def show_leader_gauge(api: monitoring.PrometheusApi, start: float, end: float) -> None:
    """lease_sidecar_is_leader per pod, one column per STEP_S, aligned in time: L leader, . standby,
    blank no sample (the pod not started yet, or gone)."""
    columns = int((end - start) // STEP_S) + 1
    print(f"    lease_sidecar_is_leader ({api.instance}), the last {end - start:.0f}s, one column per {STEP_S}s "
          f"(L leader, . standby, blank no sample):")
    for series in sorted(api.query_range(f'lease_sidecar_is_leader{{namespace="{NAMESPACE}"}}', start, end, STEP_S),
                         key=lambda s: s["metric"]["pod"]):
        row = [" "] * columns
        for at, value in series["values"]:
            row[min(columns - 1, round((float(at) - start) / STEP_S))] = "L" if value == "1" else "."
        print(f"    {series['metric']['pod']:<48} |{''.join(row)}|")


def firing(api: monitoring.PrometheusApi) -> bool:
    return any(a["labels"]["alertname"] == ALERT and a["labels"].get("namespace") == NAMESPACE
               and a["state"] == "firing" for a in api.alerts())


def signal_apps(release: example_release.Release, signal_name: str) -> None:
    for pod in release.pods():
        status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == example_release.APP_CONTAINER)
        subprocess.run(["ctr", f"--address={image.default_containerd_address()}", "-n", "k8s.io", "tasks", "kill",
                        "--signal", signal_name, status["containerID"].removeprefix("containerd://")],
                       check=True, capture_output=True, timeout=30)


def main() -> int:
    started = time.monotonic()
    try:
        monitoring.up(INTERVAL, rules_sets=ALERT_SETS)
        image.load(image.default_containerd_address())
        chart = example_release.packaged_example_chart(example_release.temporary_workdir())
        release = example_release.Release(example_release.Api(), NAMESPACE, RELEASE, chart,
                                          values=[example_release.CHARTS_DIR / example_release.EXAMPLE_CHART
                                                  / "ci" / "monitoring-values.yaml"], sets=SETS)
        say(f"installing the example ({REPLICAS} replicas) in {NAMESPACE}")
        release.install()
        try:
            with monitoring.PrometheusApi("sd") as sd, monitoring.PrometheusApi("operator") as operator:
                leader = release.wait_for_one_leader(REPLICAS)
                for api in (sd, operator):
                    wait(f"{api.instance}: every sidecar scraped", lambda api=api: len(leader_gauge(api)) == REPLICAS)
                    show_targets(api)

                say(f"lease_sidecar_is_leader now (operator): {leader_gauge(operator)}")
                say(f"deleting the leader pod {leader}")
                deleted_at = time.time()
                with example_release.LeaseWatch(release.api, NAMESPACE, release.lease) as watch:
                    failover = example_release.delete_leader(release, watch, leader)
                taken = time.monotonic()
                wait("the new leader in the gauge",
                     lambda: leader_gauge(operator).get(failover.successor) == "1", poll_s=0.25)
                say(f"{failover.successor} holds the Lease {failover.new_leader_s:.1f}s after the delete; "
                    f"Prometheus showed it leading {time.monotonic() - taken:.1f}s later")
                time.sleep(3 * STEP_S)  # a few scrapes of the new leader for the picture
                show_leader_gauge(operator, deleted_at - 6 * STEP_S, time.time())

                release.wait_for_one_leader(REPLICAS)
                say("stopping every app (SIGSTOP): no candidate may lead")
                stopped = time.monotonic()
                signal_apps(release, "SIGSTOP")
                try:
                    wait(f"{ALERT} firing", lambda: firing(operator) and firing(sd))
                    say(f"{ALERT} firing on both servers {time.monotonic() - stopped:.0f}s after the stop")
                finally:
                    signal_apps(release, "SIGCONT")
                resumed = time.monotonic()
                wait(f"{ALERT} resolved", lambda: not firing(operator) and not firing(sd))
                say(f"{ALERT} resolved on both servers {time.monotonic() - resumed:.0f}s after the apps resumed")
        finally:
            if KEEP:
                say(f"left running: kubectl -n {monitoring.NAMESPACE} port-forward pod/prometheus-operator-0 9090")
            else:
                release.uninstall()
    except (monitoring.MonitoringError, example_release.ReleaseError, image.ImageError,
            subprocess.CalledProcessError) as error:
        say(f"failed: {error}")
        return 1
    say(f"done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
