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
# The demo's alert settings: two scrape intervals of `for:` instead of minutes.
SETS = [
    "heartbeatSeconds=1", "lease-sidecar.app.heartbeatTTL=4s", "lease-sidecar.election.heartbeatInterval=1s",
    "lease-sidecar.election.heartbeatTTL=3s",
    "lease-sidecar.election.leaderLeaseTTL=10s", "lease-sidecar.election.leaderRenewalInterval=2s",
    f"lease-sidecar.monitoring.podMonitor.interval={INTERVAL}",
    "lease-sidecar.monitoring.prometheusRule.alerts.noLeader.for=10s",
]
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
    targets = [t for t in api.targets() if t["labels"].get("namespace") == NAMESPACE]
    say(f"{api.instance}: {len(targets)} targets of {NAMESPACE}")
    for target in sorted(targets, key=lambda t: t["labels"]["pod"]):
        print(f"    {target['health']:<5} {target['scrapeUrl']:<40} pod={target['labels']['pod']} "
              f"job={target['labels']['job']}")


def leader_gauge(api: monitoring.PrometheusApi) -> dict[str, str]:
    series = api.query(f'lease_sidecar_is_leader{{namespace="{NAMESPACE}"}}')
    return {s["metric"]["pod"]: s["value"][1] for s in series}


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
        monitoring.up(INTERVAL)
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
                with example_release.LeaseWatch(release.api, NAMESPACE, release.lease) as watch:
                    failover = example_release.delete_leader(release, watch, leader)
                taken = time.monotonic()
                wait("the new leader in the gauge",
                     lambda: leader_gauge(operator).get(failover.successor) == "1", poll_s=0.25)
                say(f"{failover.successor} holds the Lease {failover.new_leader_s:.1f}s after the delete; "
                    f"Prometheus showed it leading {time.monotonic() - taken:.1f}s later")
                end = time.time()
                for series in operator.query_range(f'lease_sidecar_is_leader{{namespace="{NAMESPACE}"}}',
                                                   end - 60, end, 5):
                    values = "".join("L" if v == "1" else "." for _, v in series["values"])
                    print(f"    {series['metric']['pod']:<48} {values}   (last minute, every 5s: L = leader)")

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
