"""lease_sidecar_api_request_duration_seconds tells the truth when the apiserver does not answer:
a timed-out request is recorded with the time it took, and every series a failure may land in is
exposed at zero beforehand, so that rate() (the latency alert, the dashboard) counts its first
observation too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.core.config import ElectionConfig
from sidecar.core.election import Elector
from sidecar.core.lock import BackendUnavailable
from sidecar.core.record import LeaseRecord
from sidecar.kube import lease_lock, member_leases
from sidecar.kube.lease_lock import LeaseLockBackend
from sidecar.publish.metrics import ElectionMetrics
from tests.unit.test_heartbeat import FakeClock

CONFIG = ElectionConfig(lease_ttl_s=10, renewal_interval_s=2, renew_deadline_s=6, heartbeat_interval_s=1,
                        heartbeat_ttl_s=3, failover_timeout_s=20)
HISTOGRAM = "lease_sidecar_api_request_duration_seconds"


class SilentApi:
    """A CoordinationV1Api whose apiserver never answers (packets dropped on the way)."""

    async def replace_namespaced_lease(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(3600)


async def test_a_timed_out_update_is_recorded_with_its_elapsed_time_as_a_timeout() -> None:
    observed: list[tuple[str, str, float]] = []
    async with ApiClient() as client:
        backend = LeaseLockBackend(client, "ns", "lease", lambda *request: observed.append(request))
        backend._api = SilentApi()  # type: ignore[assignment]
        timeout_s = 0.3
        with pytest.raises(BackendUnavailable):
            await backend.update(LeaseRecord(holder="a"), "7", timeout_s)
    [(verb, result, seconds)] = observed
    assert (verb, result) == ("update", "timeout")
    # The whole wait, not zero: asyncio may fire its timer up to its clock's resolution early.
    assert seconds >= timeout_s - 0.05, seconds


def exposed(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(verb, result) -> the request histogram's _count, as a scrape shows it."""
    counts = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == f"{HISTOGRAM}_count":
                counts[(sample.labels["verb"], sample.labels["result"])] = sample.value
    return counts


def test_every_verb_and_failure_result_is_exposed_at_zero_before_any_request() -> None:
    registry = CollectorRegistry(auto_describe=True)
    metrics = ElectionMetrics(registry, Elector("a", CONFIG), FakeClock(), "ns", "lease", "a")
    metrics.expose_requests(lease_lock.REQUEST_VERBS, lease_lock.REQUEST_RESULTS)
    metrics.expose_requests(member_leases.REQUEST_VERBS, member_leases.REQUEST_RESULTS)
    expected = {(verb, result) for verb in lease_lock.REQUEST_VERBS for result in lease_lock.REQUEST_RESULTS} | \
        {(verb, result) for verb in member_leases.REQUEST_VERBS for result in member_leases.REQUEST_RESULTS}
    assert ("update", "timeout") in expected
    assert exposed(registry) == dict.fromkeys(expected, 0.0)

    metrics.observe_request("update", "timeout", 4.0)
    assert exposed(registry)[("update", "timeout")] == 1.0
