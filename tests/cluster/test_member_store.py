"""The member Lease store on the real apiserver: what put and delete do with versions and absences."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from sidecar.core.lock import BackendUnavailable, Conflict
from sidecar.core.members import MemberRecord
from sidecar.kube.member_leases import MemberLeaseStore
from tests.cluster.blackhole import BlackHoleProxy

TIMEOUT_S = 5.0


@pytest.fixture()
async def store(kubeconfig: Path, namespace: str) -> AsyncIterator[MemberLeaseStore]:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield MemberLeaseStore(api_client, namespace, "orders")


def record(role: str = "standby") -> MemberRecord:
    return MemberRecord("pod-a", role, 10, {"schedule_count": 1})


async def test_put_then_list_round_trips_and_versions_move(store: MemberLeaseStore) -> None:
    first = await store.put("orders-pod-a", record(), None, TIMEOUT_S)
    second = await store.put("orders-pod-a", record("leader"), first, TIMEOUT_S)
    assert second != first
    items, _ = await store.list(TIMEOUT_S)
    assert items["orders-pod-a"] == (record("leader"), second)


async def test_a_stale_version_conflicts(store: MemberLeaseStore) -> None:
    first = await store.put("orders-pod-a", record(), None, TIMEOUT_S)
    await store.put("orders-pod-a", record("leader"), first, TIMEOUT_S)
    with pytest.raises(Conflict):
        await store.put("orders-pod-a", record(), first, TIMEOUT_S)


async def test_deleting_a_record_that_is_gone_is_not_an_error(store: MemberLeaseStore) -> None:
    version = await store.put("orders-pod-a", record(), None, TIMEOUT_S)
    await store.delete("orders-pod-a", version, TIMEOUT_S)
    await store.delete("orders-pod-a", version, TIMEOUT_S)  # a 404: already what was asked
    await store.delete("orders-never-was", None, TIMEOUT_S)
    assert (await store.list(TIMEOUT_S))[0] == {}


async def test_a_delete_with_a_stale_version_leaves_the_newer_record(store: MemberLeaseStore) -> None:
    first = await store.put("orders-pod-a", record(), None, TIMEOUT_S)
    newer = await store.put("orders-pod-a", record("leader"), first, TIMEOUT_S)
    await store.delete("orders-pod-a", first, TIMEOUT_S)  # the member came back since: keep it
    items, _ = await store.list(TIMEOUT_S)
    assert items["orders-pod-a"][1] == newer


async def test_other_failures_still_raise(store: MemberLeaseStore) -> None:
    with pytest.raises(BackendUnavailable, match="HTTP 422"):
        await store.put("Not_A_Valid_Name", record(), None, TIMEOUT_S)


async def test_a_delete_that_gets_no_answer_raises_in_time(api_path: BlackHoleProxy, namespace: str) -> None:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(api_path.kubeconfig_path), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        store = MemberLeaseStore(api_client, namespace, "orders")
        version = await store.put("orders-pod-a", record(), None, TIMEOUT_S)
        with api_path.outage(), pytest.raises(BackendUnavailable, match="TimeoutError"):
            await store.delete("orders-pod-a", version, 1.0)
