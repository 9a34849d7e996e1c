"""Metrics scraped from real sidecars and parsed with prometheus-client's own parser."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import sidecars
from tests.cluster.blackhole import BlackHoleProxy

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(sidecar: sidecars.Sidecar) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(sidecar.metrics_text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    matches = [v for (n, ls), v in samples.items() if n == metric and set(labels.items()) <= set(ls)]
    assert matches, f"{metric}{labels} not exposed"
    return sum(matches)


def test_counters_move_on_the_events_they_count(namespace: str, tmp_path: Path, api_path: BlackHoleProxy) -> None:
    fleet = [sidecars.start(f"m-{i}", "metered", namespace, tmp_path, kubeconfig=api_path.kubeconfig_path)
             for i in range(3)]
    try:
        sidecars.wait_for(lambda: len(sidecars.leaders(fleet)) == 1, 10)
        leader = next(s for s in fleet if s.identity in sidecars.leaders(fleet))
        standbys = [s for s in fleet if s is not leader]
        lease = {"namespace": namespace, "name": "metered"}

        time.sleep(2.2)  # two renewals and heartbeats
        first = {s.identity: scrape(s) for s in fleet}
        assert [s.identity for s in fleet if value(first[s.identity], "lease_sidecar_is_leader", **lease) == 1] \
            == [leader.identity]
        ours = first[leader.identity]
        assert value(ours, "lease_sidecar_leader_elections_won_total", **lease) == 1
        assert value(ours, "lease_sidecar_lease_renewals_total", **lease) >= 1
        assert value(ours, "lease_sidecar_heartbeats_sent_total", **lease) >= 2
        assert value(ours, "leader_election_master_status", name="metered") == 1
        assert value(ours, "lease_sidecar_fencing_token", **lease) >= 1
        assert 0 < value(ours, "lease_sidecar_lease_valid_seconds", **lease) <= 2.5
        assert value(ours, "lease_sidecar_leader_since_seconds", **lease) > 1
        assert value(ours, "lease_sidecar_api_request_duration_seconds_count", verb="update", result="ok") >= 1
        # Exposed at zero before any timeout: rate() then counts the first one (the latency alert).
        assert value(ours, "lease_sidecar_api_request_duration_seconds_count", verb="update", result="timeout") == 0
        assert value(ours, "lease_sidecar_info", identity=leader.identity, version="0.1.0") == 1
        assert value(ours, "lease_sidecar_watch_restarts_total", **lease) == 0
        for standby in standbys:
            theirs = first[standby.identity]
            assert value(theirs, "leader_election_master_status", name="metered") == 0
            assert value(theirs, "lease_sidecar_fencing_token", **lease) == 0
            assert value(theirs, "lease_sidecar_lease_renewals_total", **lease) == 0

        renewals = value(ours, "lease_sidecar_lease_renewals_total", **lease)
        time.sleep(1.2)
        assert value(scrape(leader), "lease_sidecar_lease_renewals_total", **lease) > renewals

        # API server down: renewals fail, the leader steps down and says so in its metrics.
        with api_path.outage():
            sidecars.wait_for(lambda: value(scrape(leader), "lease_sidecar_is_leader", **lease) == 0, 4)
            during = scrape(leader)
            assert value(during, "lease_sidecar_lease_renewal_failures_total", **lease) >= 1
            assert value(during, "lease_sidecar_leader_elections_lost_total", **lease) >= 1
            assert value(during, "lease_sidecar_lease_valid_seconds", **lease) == 0
            assert value(during, "leader_election_master_status", name="metered") == 0
            # The renewal that got no answer is recorded, as a timeout, with the time it waited.
            sidecars.wait_for(lambda: value(scrape(leader), "lease_sidecar_api_request_duration_seconds_count",
                                            verb="update", result="timeout") >= 1, 4)
            assert value(scrape(leader), "lease_sidecar_api_request_duration_seconds_sum", verb="update",
                         result="timeout") > 0
        sidecars.wait_for(lambda: len(sidecars.leaders(fleet)) == 1, 15)

        # A graceful hand-over: the standbys detect the failover and one wins.
        current = next(s for s in fleet if s.identity in sidecars.leaders(fleet))
        rest = [s for s in fleet if s is not current]
        before = {s.identity: scrape(s) for s in rest}
        current.terminate()
        # Usually at once; but a standby keeps the fence of the term it saw before the outage (the
        # leader renewed a new term after it), which can run up to one lease TTL (4 s) past here.
        sidecars.wait_for(lambda: len(sidecars.leaders(rest)) == 1, 4 + 2)
        time.sleep(0.3)
        after = {s.identity: scrape(s) for s in rest}
        # The new leader counted the failover it acted on. The other standby counts it only if it
        # tried to take the lease too: it may see the winner's record first, or still be fenced.
        winner = next(s for s in rest if s.identity in sidecars.leaders(rest))
        assert value(after[winner.identity], "lease_sidecar_failovers_detected_total", **lease) > \
            value(before[winner.identity], "lease_sidecar_failovers_detected_total", **lease)
        won = [s for s in rest if value(after[s.identity], "lease_sidecar_leader_elections_won_total", **lease)
               > value(before[s.identity], "lease_sidecar_leader_elections_won_total", **lease)]
        assert len(won) == 1 and won[0].identity in sidecars.leaders(rest)
        assert sum(value(after[s.identity], "lease_sidecar_is_leader", **lease) for s in rest) == 1
    finally:
        sidecars.stop_all(fleet)


def test_openmetrics_on_request_and_probes_on_the_metrics_port(namespace: str, tmp_path: Path) -> None:
    only = sidecars.start("om", "om", namespace, tmp_path)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{only.metrics_port}/metrics",
                                         headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(request, timeout=2) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            text = resp.read().decode()
        names = {family.name for family in parse_openmetrics(text)}
        assert {"lease_sidecar_is_leader", "lease_sidecar_lease_renewals", "leader_election_master_status"} <= names
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{only.metrics_port}{path}", timeout=2) as resp:
                assert resp.status == 200
    finally:
        only.terminate()
