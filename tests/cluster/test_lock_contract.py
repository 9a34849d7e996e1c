"""One contract, two backends: the in-memory reference and the real Lease on the control plane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from sidecar.core.lock import Conflict, LeaseStore, Versioned, WatchEvent
from sidecar.core.record import LeaseRecord
from sidecar.engine.memory_lock import InMemoryLockBackend
from sidecar.kube.lease_lock import LeaseLockBackend
from tests.cluster.kube import get_lease, kubectl

T0 = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["in-memory", "lease"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[LeaseStore]:
    if request.param == "in-memory":
        yield InMemoryLockBackend("ns/contract")
        return
    kubeconfig: Path = request.getfixturevalue("kubeconfig")
    namespace: str = request.getfixturevalue("namespace")
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield LeaseLockBackend(api_client, namespace, "contract")


async def delete(backend: LeaseStore) -> None:
    if isinstance(backend, InMemoryLockBackend):
        await backend.delete()
    else:
        assert isinstance(backend, LeaseLockBackend)
        kubectl("delete", "lease", backend.name, "-n", backend.namespace)


async def test_get_of_a_missing_record_is_none(backend: LeaseStore) -> None:
    assert await backend.get(2) is None


async def test_create_then_get_round_trips_every_field(backend: LeaseStore) -> None:
    record = LeaseRecord("a", 15, T0, T0, 3, 9)
    created = await backend.create(record, 2)
    assert created.record == record
    assert (await backend.get(2)) == created


async def test_create_over_an_existing_record_conflicts(backend: LeaseStore) -> None:
    await backend.create(LeaseRecord("a", 15), 2)
    with pytest.raises(Conflict):
        await backend.create(LeaseRecord("b", 15), 2)
    assert (await backend.get(2)).record.holder == "a"


async def test_update_is_compare_and_swap(backend: LeaseStore) -> None:
    first = await backend.create(LeaseRecord("a", 15, T0, T0), 2)
    second = await backend.update(LeaseRecord("b", 15, T0, T0, 1, 2), first.version, 2)
    assert second.version != first.version and second.record.holder == "b"
    with pytest.raises(Conflict):
        await backend.update(LeaseRecord("c", 15), first.version, 2)
    assert (await backend.get(2)).record.holder == "b"


async def test_update_of_a_deleted_record_conflicts(backend: LeaseStore) -> None:
    first = await backend.create(LeaseRecord("a", 15), 2)
    await delete(backend)
    with pytest.raises(Conflict):
        await backend.update(LeaseRecord("a", 15), first.version, 2)


async def test_watch_starts_with_the_current_state_then_every_change(backend: LeaseStore) -> None:
    first = await backend.create(LeaseRecord("a", 15), 2)
    seen: list[WatchEvent] = []
    started = asyncio.Event()

    async def consume() -> None:
        async for event in backend.watch(5):
            seen.append(event)
            started.set()
            if len(seen) == 4:
                return

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    second = await backend.update(LeaseRecord("b", 15), first.version, 2)
    await backend.update(LeaseRecord("", 1), second.version, 2)
    await delete(backend)
    await asyncio.wait_for(consumer, 10)
    assert [e.current.record.holder if e.current else None for e in seen] == ["a", "b", "", None]
    assert isinstance(seen[1].current, Versioned) and seen[1].current.version == second.version


async def test_lease_wire_format_is_client_gos(kubeconfig: Path, namespace: str) -> None:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        backend = LeaseLockBackend(api_client, namespace, "wire")
        created = await backend.create(LeaseRecord("a", 15, T0, T0, 0, 1), 2)
        kubectl("label", "lease", "wire", "-n", namespace, "team=x")
        kubectl("annotate", "lease", "wire", "-n", namespace, "other=kept")
        current = await backend.get(2)
        assert current is not None and current.version != created.version
        await backend.update(LeaseRecord("b", 15, T0, T0, 1, 2), current.version, 2)
    lease = get_lease(namespace, "wire")
    assert lease["spec"]["renewTime"] == "2026-05-01T12:00:00.123456Z"
    assert lease["spec"]["acquireTime"] == "2026-05-01T12:00:00.123456Z"
    assert lease["metadata"]["labels"] == {"team": "x"}
    assert lease["metadata"]["annotations"]["other"] == "kept"
    assert lease["metadata"]["annotations"]["lease-sidecar.io/fencing-token"] == "2"
