"""Fencing tokens never restart (issue 18 item 2), on the real control plane.

A Lease deleted (or deleted and re-created by hand) while no sidecar remembers its tokens used to
start them again at 1, and storage that keeps the highest token it accepted then refused every
later leader. A new term's token is now one above the resourceVersion its acquisition replaces
(or, for a creation, the list's that showed the Lease absent), which exceeds every token that
Lease ever carried (core/election.py, L2; resourceVersions compare as integers since Kubernetes
1.35, KEP-5504)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from sidecar.core.record import LeaseRecord
from sidecar.kube.lease_lock import LeaseLockBackend
from tests.cluster import sidecars
from tests.cluster.kube import get_lease, kubectl

LEASE = "tokens"


def stored_token(namespace: str) -> int:
    lease = get_lease(namespace, LEASE)
    assert lease is not None
    return int(lease["metadata"]["annotations"]["lease-sidecar.io/fencing-token"])


@pytest.mark.parametrize("how", ["deleted", "deleted-and-recreated-empty"])
def test_a_lease_deleted_with_nobody_remembering_never_lowers_the_token(
        how: str, namespace: str, tmp_path: Path) -> None:
    first = sidecars.start("first", LEASE, namespace, tmp_path)
    try:
        sidecars.wait_for(lambda: (first.leader() or {}).get("is_leader"), 15)
        first_token = first.leader()["fencing_token"]
    finally:
        assert first.terminate() == 0  # releases; the Lease keeps the token
    assert stored_token(namespace) == first_token
    kubectl("delete", "lease", LEASE, "-n", namespace)
    if how == "deleted-and-recreated-empty":  # e.g. re-applied from a manifest: no holder, no token
        kubectl("create", "-f", "-", "-n", namespace, stdin=json.dumps({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE},
            "spec": {"leaseDurationSeconds": 4}}))
    second = sidecars.start("second", LEASE, namespace, tmp_path)  # a new process: it remembers nothing
    try:
        sidecars.wait_for(lambda: (second.leader() or {}).get("is_leader"), 15)
        second_token = second.leader()["fencing_token"]
    finally:
        assert second.terminate() == 0
    assert second_token > first_token, (first_token, second_token)
    print(f"{how}: token {first_token} before, {second_token} after")


@pytest.fixture()
async def store(kubeconfig: Path, namespace: str) -> AsyncIterator[LeaseLockBackend]:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield LeaseLockBackend(api_client, namespace, LEASE)


async def test_an_absent_lease_is_reported_with_a_version_above_every_earlier_write(
        store: LeaseLockBackend, namespace: str) -> None:
    assert await store.get(2) is None
    assert store.absent_version is not None
    created = await store.create(LeaseRecord("a", 4), 2)
    assert int(created.version) > int(store.absent_version)
    kubectl("delete", "lease", LEASE, "-n", namespace)
    assert await store.get(2) is None
    assert int(store.absent_version) >= int(created.version)
    events = store.watch(5, 2)
    first = await anext(events)
    assert first.current is None and int(store.absent_version) >= int(created.version)
    await events.aclose()
