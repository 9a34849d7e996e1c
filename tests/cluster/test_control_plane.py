"""The control plane is a real one: real storage, optimistic concurrency, RBAC and tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from tests.cluster.kube import ca_path, kubectl, server_url
from tests.conftest import localcluster


async def admin_client(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def test_server_reports_its_real_version(kubeconfig: Path) -> None:
    info = json.loads(kubectl("version", "-o", "json"))
    assert info["serverVersion"]["gitVersion"] == localcluster.KUBE_VERSION
    assert localcluster.status(), "status must report both processes running and ready"


def test_up_is_idempotent_while_running(cluster: localcluster.Paths) -> None:
    pid = localcluster.running_pid(cluster, "kube-apiserver")
    localcluster.up(cluster)
    assert localcluster.running_pid(cluster, "kube-apiserver") == pid


async def test_lease_round_trip_and_stale_write_conflict(kubeconfig: Path, namespace: str) -> None:
    async with await admin_client(kubeconfig) as api_client:
        leases = client.CoordinationV1Api(api_client)
        body = {"metadata": {"name": "probe"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 5}}
        created = await leases.create_namespaced_lease(namespace, body)
        stale_version = created.metadata.resource_version
        created.spec.holder_identity = "b"
        updated = await leases.replace_namespaced_lease("probe", namespace, created)
        assert updated.spec.holder_identity == "b"
        assert updated.metadata.resource_version != stale_version
        updated.metadata.resource_version = stale_version
        updated.spec.holder_identity = "c"
        with pytest.raises(ApiException) as conflict:
            await leases.replace_namespaced_lease("probe", namespace, updated)
        assert conflict.value.status == 409
        final = await leases.read_namespaced_lease("probe", namespace)
        assert final.spec.holder_identity == "b"


async def test_service_account_token_is_bound_by_its_role(kubeconfig: Path, namespace: str) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubectl("create", "role", "lease-reader", "--verb=get,list", "--resource=leases", "-n", namespace)
    kubectl("create", "rolebinding", "reader", "--role=lease-reader", f"--serviceaccount={namespace}:reader",
            "-n", namespace)
    async with await admin_client(kubeconfig) as api_client:
        request = {"spec": {"audiences": [], "expirationSeconds": 600}}
        token = (await client.CoreV1Api(api_client).create_namespaced_service_account_token(
            "reader", namespace, request)).status.token
    assert token.count(".") == 2  # a signed JWT

    configuration = client.Configuration(host=server_url(), api_key={"BearerToken": f"Bearer {token}"})
    configuration.ssl_ca_cert = str(ca_path())
    async with client.ApiClient(configuration) as as_reader:
        leases = client.CoordinationV1Api(as_reader)
        assert (await leases.list_namespaced_lease(namespace)).items == []
        with pytest.raises(ApiException) as denied:
            await leases.create_namespaced_lease(namespace, {"metadata": {"name": "x"}, "spec": {}})
        assert denied.value.status == 403
        with pytest.raises(ApiException) as denied_secrets:
            await client.CoreV1Api(as_reader).list_namespaced_secret(namespace)
        assert denied_secrets.value.status == 403
    assert kubectl("auth", "can-i", "get", "leases", "-n", namespace, token=token).strip() == "yes"
    assert kubectl("auth", "can-i", "delete", "leases", "-n", namespace, token=token, check=False).startswith("no")
