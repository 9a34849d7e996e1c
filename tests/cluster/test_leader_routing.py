"""Issue 11 on the real control plane: the leader Service's EndpointSlice, Events, and their RBAC.

No kubelet or kube-proxy here, so pod IPs are plain data (10.244.0.x, never contacted): what is
checked is what the API server stores and in which order, which is all the sidecar controls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client, config

from sidecar.core.announce import BECAME_LEADER, LOST_LEADERSHIP, REPORTING_CONTROLLER, Announcement, EventPolicy
from sidecar.core.routing import NothingToDo, Publish, Refuse, Withdraw
from sidecar.core.succession import SUCCESSOR_WINDOW_S
from sidecar.kube.endpoints import LeaderEndpoints
from sidecar.kube.events import LeaseEvents
from tests.cluster import sidecars
from tests.cluster.kube import get_lease, json_objects, kubectl, service_account_dir
from tests.cluster.test_chart import (  # noqa: F401  (fixtures)
    EXAMPLE,
    can_i,
    charts,
    helm_env,
    install_rbac,
    one,
    render,
    sidecar_of,
)
from tests.conftest import localcluster

SERVICE = "leader"


def pod_ip(index: int) -> str:
    return f"10.244.0.{10 + index}"


def create_service(namespace: str, name: str = SERVICE) -> None:
    kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))


def get_slice(namespace: str, name: str = SERVICE) -> dict[str, Any] | None:
    out = kubectl("get", "endpointslice", name, "-n", namespace, "-o", "json", check=False)
    try:
        return json.loads(out)
    except ValueError:
        return None


def addresses(slice_: dict[str, Any] | None) -> list[str]:
    return [a for e in (slice_ or {}).get("endpoints") or [] for a in e.get("addresses") or []]


def slice_token(slice_: dict[str, Any] | None) -> int | None:
    value = ((slice_ or {}).get("metadata") or {}).get("annotations", {}).get("lease-sidecar.io/fencing-token")
    return int(value) if value else None


class SliceWatcher:
    """`kubectl get endpointslice --watch`: every stored state of the slice, in order."""

    def __init__(self, namespace: str, name: str = SERVICE) -> None:
        binary = str(localcluster.TOOLS["kubectl"].cache_path())
        self.process = subprocess.Popen(
            [binary, "--kubeconfig", str(localcluster.Paths().kubeconfig), "get", "endpointslice", "-n", namespace,
             f"--field-selector=metadata.name={name}", "--watch", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.states: list[tuple[float, list[str], int | None]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for obj in json_objects(self.process.stdout):
            self.states.append((time.monotonic(), addresses(obj), slice_token(obj)))

    def stop(self) -> list[tuple[float, list[str], int | None]]:
        self.process.terminate()
        self.process.wait(10)
        self._thread.join(5)
        return self.states


@pytest.fixture()
def fleet() -> Iterator[list[sidecars.Sidecar]]:
    group: list[sidecars.Sidecar] = []
    yield group
    sidecars.stop_all(group)


def start_routed(fleet: list[sidecars.Sidecar], count: int, namespace: str, tmp_path: Path) -> None:
    for index in range(len(fleet), len(fleet) + count):
        sidecar = sidecars.start(f"pod-{index}", "work", namespace, tmp_path, "--leader-service", SERVICE,
                                 "--pod-ip", pod_ip(index), "--events")
        sidecar.extra["ip"] = pod_ip(index)
        fleet.append(sidecar)


def leader_of(fleet: list[sidecars.Sidecar]) -> sidecars.Sidecar:
    names = sidecars.leaders(fleet)
    assert len(names) == 1, names
    return next(s for s in fleet if s.identity == names[0])


def routed_to(namespace: str, leader: sidecars.Sidecar) -> bool:
    current = get_slice(namespace)
    body = leader.leader() or {}
    return addresses(current) == [leader.extra["ip"]] and slice_token(current) == body.get("fencing_token")


def test_slice_never_holds_two_addresses_across_failovers(fleet: list[sidecars.Sidecar], namespace: str,
                                                          tmp_path: Path) -> None:
    create_service(namespace)
    watcher = SliceWatcher(namespace)
    start_routed(fleet, 4, namespace, tmp_path)
    sidecars.wait_for(lambda: len(sidecars.leaders(fleet)) == 1, 15)
    first = leader_of(fleet)
    sidecars.wait_for(lambda: routed_to(namespace, first), 10)

    first.kill()  # a crash: the slice keeps the dead pod's address until the next leader writes
    rest = [s for s in fleet if s.alive()]
    sidecars.wait_for(lambda: len(sidecars.leaders(rest)) == 1, 15)
    second = leader_of(rest)
    sidecars.wait_for(lambda: routed_to(namespace, second), 10)

    assert second.terminate() == 0  # graceful: it leaves the Service before releasing
    rest = [s for s in fleet if s.alive()]
    sidecars.wait_for(lambda: len(sidecars.leaders(rest)) == 1, 15)
    third = leader_of(rest)
    sidecars.wait_for(lambda: routed_to(namespace, third), 10)
    time.sleep(0.5)
    states = watcher.stop()

    assert states, "the watch saw nothing"
    assert [s for s in states if len(s[1]) > 1] == [], states
    tokens = [token for _, _, token in states if token is not None]
    assert tokens == sorted(tokens), f"an older term overwrote a newer one: {tokens}"
    ips = [ips[0] if ips else None for _, ips, _ in states]
    # The graceful step-down shows as an empty slice between the second and the third leader.
    second_at = max(i for i, ip in enumerate(ips) if ip == second.extra["ip"])
    assert ips[second_at + 1] is None, ips
    assert third.extra["ip"] in ips[second_at + 1:]
    for sidecar in fleet:
        assert "Forbidden" not in sidecar.logs()


@pytest.fixture()
async def api_client(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api


async def test_a_stale_terms_write_is_refused(api_client: client.ApiClient, namespace: str) -> None:
    create_service(namespace)
    old = LeaderEndpoints(api_client, namespace, SERVICE, "pod-a", pod_ip(1), "pod-a", 5.0)
    new = LeaderEndpoints(api_client, namespace, SERVICE, "pod-b", pod_ip(2), "pod-b", 5.0)
    assert isinstance(await old.publish(5), Publish)
    assert (addresses(get_slice(namespace)), slice_token(get_slice(namespace))) == ([pod_ip(1)], 5)
    assert isinstance(await new.publish(6), Publish)
    # The term-5 leader wakes up from a pause and tries to route to itself, or to leave: refused.
    assert await old.publish(5) == Refuse(6)
    assert await old.withdraw(5) == Refuse(6)
    stored = get_slice(namespace)
    assert (addresses(stored), slice_token(stored)) == ([pod_ip(2)], 6)
    assert stored["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert stored["metadata"]["labels"] == {"kubernetes.io/service-name": SERVICE,
                                            "endpointslice.kubernetes.io/managed-by": "lease-sidecar.io"}
    # The newer term leaves; the token stays, so the older one still cannot write.
    assert isinstance(await new.withdraw(6), Withdraw)
    assert await old.publish(5) == Refuse(6)
    assert (addresses(get_slice(namespace)), slice_token(get_slice(namespace))) == ([], 6)
    assert await new.withdraw(6) == NothingToDo()
    assert old.writes == 1 and old.refusals == 3 and new.writes == 2


async def test_concurrent_terms_end_with_the_newest(api_client: client.ApiClient, namespace: str) -> None:
    """Compare-and-swap: whatever the interleaving, the newest term's address is the one left."""
    import asyncio

    create_service(namespace)
    writers = [LeaderEndpoints(api_client, namespace, SERVICE, f"pod-{i}", pod_ip(i), None, 5.0) for i in range(6)]
    await asyncio.gather(*(w.publish(10 + i) for i, w in enumerate(writers)))
    stored = get_slice(namespace)
    assert (addresses(stored), slice_token(stored)) == ([pod_ip(5)], 15)


def slice_epoch(slice_: dict[str, Any] | None) -> tuple[str | None, list[str]]:
    annotations = ((slice_ or {}).get("metadata") or {}).get("annotations") or {}
    retired = annotations.get("lease-sidecar.io/retired-lease-uids") or ""
    return annotations.get("lease-sidecar.io/lease-uid"), [uid for uid in retired.split(",") if uid]


async def test_a_new_lease_uid_is_a_new_epoch_and_a_retired_one_is_refused(api_client: client.ApiClient,
                                                                           namespace: str) -> None:
    """Issue 17 item 4: after a token reset (the Lease deleted and created again) or a rename, the
    tokens restart; the Lease's UID tells the epochs apart."""
    create_service(namespace)
    old = LeaderEndpoints(api_client, namespace, SERVICE, "pod-a", pod_ip(1), "pod-a", 5.0)
    new = LeaderEndpoints(api_client, namespace, SERVICE, "pod-b", pod_ip(2), "pod-b", 5.0)
    renamed = LeaderEndpoints(api_client, namespace, SERVICE, "pod-c", pod_ip(3), "pod-c", 5.0)
    assert isinstance(await old.publish(9, "uid-1"), Publish)
    # Reset: the new Lease's first term has token 1, far below 9; it is a new epoch and routes.
    assert isinstance(await new.publish(1, "uid-2"), Publish)
    stored = get_slice(namespace)
    assert (addresses(stored), slice_token(stored), slice_epoch(stored)) == ([pod_ip(2)], 1, ("uid-2", ["uid-1"]))
    # The old Lease's leader, woken from a pause, can neither route to itself nor empty the slice.
    assert isinstance(await old.publish(9, "uid-1"), Refuse)
    assert isinstance(await old.withdraw(9, "uid-1"), Refuse)
    assert addresses(get_slice(namespace)) == [pod_ip(2)]
    # A rename: a second election on the same Service takes it once; the first never takes it back,
    # so the two cannot overwrite it in turn.
    assert isinstance(await renamed.publish(1, "uid-3"), Publish)
    for _ in range(2):
        assert isinstance(await new.publish(2, "uid-2"), Refuse)
        assert await renamed.publish(1, "uid-3") == NothingToDo()
    stored = get_slice(namespace)
    assert (addresses(stored), slice_epoch(stored)) == ([pod_ip(3)], ("uid-3", ["uid-1", "uid-2"]))
    # Within an epoch the tokens still rule.
    assert isinstance(await renamed.publish(2, "uid-3"), Publish)
    assert isinstance(await new.publish(1, "uid-3"), Refuse)
    assert isinstance(await renamed.withdraw(2, "uid-3"), Withdraw)
    assert (addresses(get_slice(namespace)), slice_epoch(get_slice(namespace))[0]) == ([], "uid-3")


async def test_hand_edits_of_ports_labels_and_conditions_are_repaired(api_client: client.ApiClient,
                                                                      namespace: str) -> None:
    create_service(namespace)
    leader = LeaderEndpoints(api_client, namespace, SERVICE, "pod-a", pod_ip(1), "pod-a", 5.0)
    assert isinstance(await leader.publish(3, "uid-1"), Publish)
    intact = get_slice(namespace)
    assert await leader.publish(3, "uid-1") == NothingToDo()
    edits = [
        ["--type=json", "-p", json.dumps([{"op": "replace", "path": "/ports/0/port", "value": 9999}])],
        ["--type=json", "-p", json.dumps([{"op": "remove",
                                           "path": "/metadata/labels/endpointslice.kubernetes.io~1managed-by"}])],
        ["--type=json", "-p", json.dumps([{"op": "replace", "path": "/endpoints/0/conditions/ready",
                                           "value": False}])],
        ["--type=json", "-p", json.dumps([{"op": "replace", "path": "/metadata/labels/kubernetes.io~1service-name",
                                           "value": "elsewhere"}])],
    ]
    for edit in edits:
        kubectl("patch", "endpointslice", SERVICE, "-n", namespace, *edit)
        assert isinstance(await leader.publish(3, "uid-1"), Publish), edit
        repaired = get_slice(namespace)
        assert repaired is not None and intact is not None
        for part in ("ports", "endpoints"):
            assert repaired[part] == intact[part], (edit, part)
        assert repaired["metadata"]["labels"] == intact["metadata"]["labels"], edit
        assert await leader.publish(3, "uid-1") == NothingToDo()


def test_the_leader_service_survives_a_rename_of_the_lease(fleet: list[sidecars.Sidecar], namespace: str,
                                                           tmp_path: Path) -> None:
    """End to end: an election's tokens grow past 1, then the deployment moves to a new Lease name
    (its tokens start again at 1): the new leader is routed, and /leader names its Lease's UID."""
    create_service(namespace)
    start_routed(fleet, 2, namespace, tmp_path)
    sidecars.wait_for(lambda: len(sidecars.leaders(fleet)) == 1, 15)
    first = leader_of(fleet)
    first.kill()
    second = next(s for s in fleet if s.alive())
    sidecars.wait_for(lambda: routed_to(namespace, second), 15)
    assert slice_token(get_slice(namespace)) >= 2
    second.kill()  # the old election is gone; its slice keeps a dead pod's address

    renamed = sidecars.start("pod-9", "work-renamed", namespace, tmp_path, "--leader-service", SERVICE,
                             "--pod-ip", pod_ip(9))
    renamed.extra["ip"] = pod_ip(9)
    fleet.append(renamed)
    sidecars.wait_for(lambda: (renamed.leader() or {}).get("is_leader") is True, 15)
    sidecars.wait_for(lambda: routed_to(namespace, renamed), 10)  # before the fix: refused for good
    lease = get_lease(namespace, "work-renamed")
    assert lease is not None and renamed.leader()["lease_uid"] == lease["metadata"]["uid"]
    assert slice_epoch(get_slice(namespace))[0] == lease["metadata"]["uid"]


async def test_events_are_rate_limited_and_grouped_into_series(api_client: client.ApiClient,
                                                               namespace: str) -> None:
    def now() -> tuple[float, Any]:
        from datetime import UTC, datetime

        return time.monotonic(), datetime.now(UTC)

    events = LeaseEvents(api_client, namespace, "work", "pod-a", now, 5.0,
                         EventPolicy(burst=3, refill_s=3600, series_window_s=600))
    for _ in range(20):
        await events.send(Announcement(LOST_LEADERSHIP, "Warning", "Lose", "pod-a lost leadership: test"))
    for _ in range(5):
        await events.send(Announcement(BECAME_LEADER, "Normal", "Acquire", "pod-a became leader"))
    assert events.sent == 3 and events.policy.dropped == 22
    stored = json.loads(kubectl("get", "events.events.k8s.io", "-n", namespace, "-o", "json"))["items"]
    assert len(stored) == 1, stored
    event = stored[0]
    assert event["reason"] == LOST_LEADERSHIP and event["series"]["count"] == 3
    assert event["regarding"] == {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": "work",
                                  "namespace": namespace}
    assert event["reportingController"] == "lease-sidecar" and event["reportingInstance"] == "pod-a"
    shown = kubectl("events", "-n", namespace, "--for", "lease/work")
    assert LOST_LEADERSHIP in shown, shown


def test_chart_rbac_allows_exactly_the_routing_and_events(charts: Path, helm_env: dict[str, str],  # noqa: F811
                                                           namespace: str, tmp_path: Path) -> None:
    """The chart's Role with leaderService and events on, proven with its ServiceAccount token: a
    sidecar holding only that token leads, routes the Service to itself, records Events, and leaves
    the Service on SIGTERM; and the token can do nothing more than that."""
    docs = render(helm_env, charts / EXAMPLE, "--set", "lease-sidecar.leaderService.enabled=true",
                  namespace=namespace)
    token = install_rbac(docs, namespace)
    service = one(docs, "Service")
    kubectl("apply", "--server-side", "--field-manager=lease-sidecar-test", "-n", namespace, "-f", "-",
            stdin=yaml.safe_dump(service))
    name = service["metadata"]["name"]
    assert name == "demo-leader" and "selector" not in service["spec"]
    kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other"}, "spec": {"ports": [{"port": 1}]}}))
    slices = "endpointslices.discovery.k8s.io"
    allowed = [("get", f"{slices}/{name}"), ("update", f"{slices}/{name}"),
               ("create", "endpointslices.discovery.k8s.io"), ("get", f"services/{name}"),
               ("create", "events.events.k8s.io"), ("patch", "events.events.k8s.io")]
    denied = [("get", "endpointslices.discovery.k8s.io/other"), ("update", "endpointslices.discovery.k8s.io/other"),
              ("delete", f"endpointslices.discovery.k8s.io/{name}"), ("list", "endpointslices.discovery.k8s.io"),
              ("get", "services/other"), ("update", f"services/{name}"), ("get", "events.events.k8s.io"),
              ("list", "events.events.k8s.io"), ("delete", "events.events.k8s.io"), ("patch", "pods"),
              ("get", "pods"), ("create", "events")]
    assert [a for a in allowed if not can_i(token, namespace, *a)] == []
    assert [d for d in denied if can_i(token, namespace, *d)] == []

    in_cluster = service_account_dir(tmp_path, token, namespace)
    container, _ = sidecar_of(one(docs, "Deployment")["spec"]["template"]["spec"])
    # No app here to heartbeat: leadership is not gated on one (the example chart turns that on).
    chart_env = {item["name"]: item["value"] for item in container["env"]
                 if item["name"].startswith("LEASE_SIDECAR_") and "value" in item
                 and not item["name"].startswith("LEASE_SIDECAR_APP_")}
    assert chart_env["LEASE_SIDECAR_LEADER_SERVICE"] == name and chart_env["LEASE_SIDECAR_EVENTS"] == "true"
    fields = {item["name"]: item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for item in container["env"]}
    assert fields["POD_IP"] == "status.podIP"
    env = {**chart_env, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(localcluster.APISERVER_PORT), "LEASE_SIDECAR_IN_CLUSTER_DIR": str(in_cluster),
           "POD_NAMESPACE": namespace, "POD_IP": pod_ip(1), "POD_NAME": "demo-pod-0"}
    sidecar = sidecars.start("demo-pod-0", chart_env["LEASE_SIDECAR_LEASE_NAME"], namespace, tmp_path,
                             kubeconfig=None, env=env, drop_env=("KUBECONFIG",), timing=())
    try:
        sidecars.wait_for(lambda: (sidecar.leader() or {}).get("is_leader") is True, 20)
        sidecars.wait_for(lambda: addresses(get_slice(namespace, name)) == [pod_ip(1)], 10)
        stored = get_slice(namespace, name)
        assert stored["endpoints"][0]["targetRef"] == {"kind": "Pod", "name": "demo-pod-0", "namespace": namespace}
        assert sidecar.terminate() == 0
    finally:
        sidecars.stop_all([sidecar])
    assert addresses(get_slice(namespace, name)) == []
    # Ours only: the apiserver's ClusterIP repair loop may report on the leader Service meanwhile.
    reasons = [e["reason"] for e in json.loads(kubectl("get", "events.events.k8s.io", "-n", namespace, "-o",
                                                       "json"))["items"]
               if e.get("reportingController") == REPORTING_CONTROLLER]
    assert sorted(reasons) == ["BecameLeader", "Released"], reasons
    logs = sidecar.logs()
    assert "Forbidden" not in logs and " 403" not in logs, logs[-3000:]


def counter(sidecar: sidecars.Sidecar, name: str) -> float:
    for line in sidecar.metrics_text().splitlines():
        if line.startswith(f"lease_sidecar_{name}_total{{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in the metrics of {sidecar.identity}")


def test_handover_lands_on_the_named_candidate_and_nobody_else_writes(
        fleet: list[sidecars.Sidecar], namespace: str, tmp_path: Path, kubeconfig: Path) -> None:
    """POST /leader/handover, then the CLI through the Lease: each time the named candidate leads,
    the leader Service follows, and no other candidate even tried to write (their metrics count
    every acquisition attempt that lost a race)."""
    create_service(namespace)
    start_routed(fleet, 6, namespace, tmp_path)
    sidecars.wait_for(lambda: len(sidecars.leaders(fleet)) == 1, 15)
    time.sleep(1.0)  # every candidate past its start-up fences
    won = {s.identity: counter(s, "leader_elections_won") for s in fleet}
    lost = {s.identity: counter(s, "leader_elections_lost") for s in fleet}

    leader = leader_of(fleet)
    successor = next(s for s in fleet if s is not leader and s.identity != "pod-0")
    assert successor.get(f"/leader/handover?to={leader.identity}")[0] == 405  # GET

    def post(sidecar: sidecars.Sidecar, query: str) -> tuple[int, Any]:
        request = urllib.request.Request(sidecar.url + "/leader/handover" + query, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert post(successor, f"?to={leader.identity}")[0] == 409  # not the leader
    assert post(leader, "?to=")[0] == 400
    status, body = post(leader, f"?to={successor.identity}")
    assert status == 202 and body["handover_to"] == successor.identity and body["status"]["is_leader"] is False
    sidecars.wait_for(lambda: sidecars.leaders(fleet) == [successor.identity], 5)
    sidecars.wait_for(lambda: routed_to(namespace, successor), 5)

    target = next(s for s in fleet if s not in (leader, successor))
    cli = subprocess.run([sys.executable, "-m", "sidecar", "handover", "--lease", "work", "--to", target.identity,
                          "-n", namespace, "--kubeconfig", str(kubeconfig)], capture_output=True, text=True,
                         timeout=30)
    assert cli.returncode == 0, cli.stderr
    assert f"{target.identity} holds {namespace}/work after" in cli.stdout, cli.stdout
    assert "spec.preferredHolder" in cli.stdout
    sidecars.wait_for(lambda: sidecars.leaders(fleet) == [target.identity], 5)
    sidecars.wait_for(lambda: routed_to(namespace, target), 5)

    for sidecar in fleet:
        expected_won = 1 if sidecar in (successor, target) else 0
        assert counter(sidecar, "leader_elections_won") - won[sidecar.identity] == expected_won, sidecar.identity
        assert counter(sidecar, "leader_elections_lost") - lost[sidecar.identity] == 0, sidecar.identity
    lease = json.loads(kubectl("get", "lease", "work", "-n", namespace, "-o", "json"))
    assert "lease-sidecar.io/handover-to" not in lease["metadata"].get("annotations", {})
    assert not lease["spec"].get("preferredHolder")
    def reasons() -> list[str]:
        return [e["reason"] for e in json.loads(kubectl("get", "events.events.k8s.io", "-n", namespace, "-o",
                                                        "json"))["items"]
                if e.get("reportingController") == REPORTING_CONTROLLER]

    try:  # Events are sent from their own task, after the role change
        sidecars.wait_for(lambda: reasons().count("HandoverRequested") == 2, 5, interval=0.2)
    except AssertionError:
        raise AssertionError(f"two hand-overs, two HandoverRequested Events: {reasons()}") from None
    assert sorted(reasons()) == sorted(["BecameLeader"] * 3 + ["HandoverRequested", "Released"] * 2)


def test_a_replaced_leader_hands_over_to_the_new_revision(fleet: list[sidecars.Sidecar], namespace: str,
                                                          tmp_path: Path) -> None:
    """A rollout in miniature, with Deployment-style pod names: the old leader resigns (its app's
    SIGTERM handler) after an old standby did; it names the pod of the new revision, which takes
    the lease at once, and nobody else writes."""
    old = [f"web-aaaaaa1-x000{i}" for i in range(3)]
    for name in old:
        fleet.append(sidecars.start(name, "work", namespace, tmp_path, "--members"))
    sidecars.wait_for(lambda: len(sidecars.leaders(fleet)) == 1, 15)
    fresh = sidecars.start("web-bbbbbb2-y0001", "work", namespace, tmp_path, "--members")
    fleet.append(fresh)
    leader = leader_of(fleet)

    def alive_members() -> int:
        return sum(1 for m in leader.get("/members")[1]["members"] if m["alive"])

    sidecars.wait_for(lambda: alive_members() == 4, 15)
    time.sleep(1.5)  # a heartbeat: the leader's successor view has every member
    lost = {s.identity: counter(s, "leader_elections_lost") for s in fleet}

    def resign(sidecar: sidecars.Sidecar) -> None:
        request = urllib.request.Request(sidecar.url + "/leader/resign?sit_out=3600", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    resign(next(s for s in fleet if s.identity in old and s is not leader))  # an old standby goes first
    started = time.monotonic()
    resign(leader)
    sidecars.wait_for(lambda: sidecars.leaders(fleet) == [fresh.identity], 5)
    took = time.monotonic() - started
    assert took < SUCCESSOR_WINDOW_S, f"{took:.3f}s: the named successor did not take it within the window"
    assert "web-bbbbbb2-y0001" in leader.logs() and '"successor": "web-bbbbbb2-y0001"' in leader.logs()
    for sidecar in fleet:
        assert counter(sidecar, "leader_elections_lost") == lost[sidecar.identity], sidecar.identity


def test_label_pod_follows_the_role(fleet: list[sidecars.Sidecar], namespace: str, tmp_path: Path) -> None:
    """--label-pod: the pod's lease-sidecar.io/role label says leader while it leads, standby after
    it steps down. (The pod object is never scheduled here: only its labels matter.)"""
    kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0"},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}))

    def label() -> str | None:
        pod = json.loads(kubectl("get", "pod", "web-0", "-n", namespace, "-o", "json"))
        return (pod["metadata"].get("labels") or {}).get("lease-sidecar.io/role")

    sidecar = sidecars.start("web-0", "work", namespace, tmp_path, "--label-pod", env={"POD_NAME": "web-0"})
    fleet.append(sidecar)
    sidecars.wait_for(lambda: (sidecar.leader() or {}).get("is_leader") is True, 15)
    sidecars.wait_for(lambda: label() == "leader", 10)
    assert sidecar.terminate() == 0
    assert label() == "standby"
