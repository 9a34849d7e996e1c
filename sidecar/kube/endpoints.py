"""`--leader-service`: the leader's pod IP as the only endpoint of a selector-less Service.

A thin shell around `core.routing`: it reads the EndpointSlice, asks the rule what to write, and
writes it with the resourceVersion it read (compare-and-swap), re-reading after a conflict.
`LeaderRoute` follows the election's published role: publish on becoming leader (and re-check at
every heartbeat, so a deleted slice, or one whose labels, ports or endpoint conditions were edited,
is repaired), withdraw on stepping down; the driver also calls `withdraw_now` before a release
write, so the old leader leaves the Service first. Each write carries the term's token and its
Lease's UID (core/routing.py: a new UID is a new epoch), and a publish is sent only while the
election still shows this term leading (a writer woken from a pause past its deadline stays out).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api, DiscoveryV1Api

from sidecar.core.routing import (
    MANAGED_BY,
    SLICE_FENCING_ANNOTATION,
    SLICE_HOLDER_ANNOTATION,
    SLICE_LEASE_UID_ANNOTATION,
    SLICE_RETIRED_UIDS_ANNOTATION,
    NothingToDo,
    Publish,
    Refuse,
    SliceAction,
    SliceState,
    Withdraw,
    publish_action,
    withdraw_action,
)
from sidecar.kube.calls import ApiCallFailed, call_json, reconcile_on_wake

log = logging.getLogger("lease_sidecar.kube.endpoints")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
_MAX_CONFLICTS = 5


def slice_name(service: str) -> str:
    """The one EndpointSlice this sidecar writes for `service`: named like it (RBAC names it too).
    Slices of the EndpointSlice controllers are named `<service>-<random>`, so they never collide."""
    return service


class LeaderEndpoints:
    """Reads and writes the leader Service's EndpointSlice. Every call is bounded by `timeout_s`."""

    def __init__(self, api_client: ApiClient, namespace: str, service: str, identity: str, pod_ip: str,
                 pod_name: str | None, timeout_s: float) -> None:
        self.namespace, self.service, self.name = namespace, service, slice_name(service)
        self.identity, self.pod_ip, self.pod_name = identity, pod_ip, pod_name
        self.timeout_s = timeout_s
        self.address_type = "IPv6" if ipaddress.ip_address(pod_ip).version == 6 else "IPv4"
        self._discovery = DiscoveryV1Api(api_client)
        self._core = CoreV1Api(api_client)
        self._ports: list[dict[str, Any]] | None = None
        self.writes = 0
        self.refusals = 0

    async def publish(self, token: int, lease_uid: str | None = None,
                      still_leading: Callable[[], bool] | None = None) -> SliceAction:
        """Route to this pod as term `token` of the Lease `lease_uid`. `still_leading` is asked
        before every write: False (the term ended meanwhile) writes nothing."""
        ports = await self._service_ports()  # what an intact slice carries
        return await self._converge(lambda state: publish_action(state, token, self.pod_ip, lease_uid),
                                    ports, still_leading)

    async def withdraw(self, token: int, lease_uid: str | None = None) -> SliceAction:
        return await self._converge(lambda state: withdraw_action(state, token, self.pod_ip, lease_uid), None, None)

    async def read(self, ports: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any] | None, SliceState | None]:
        """The slice and its state; with `ports` (the Service's), whether it is intact is judged too."""
        try:
            raw = await call_json("get endpointslice", self.timeout_s,
                                  self._discovery.read_namespaced_endpoint_slice, self.name, self.namespace)
        except ApiCallFailed as error:
            if error.status == 404:
                return None, None
            raise
        state = slice_state(raw)
        if ports is not None:
            state = replace(state, intact=self._intact(raw, ports))
        return raw, state

    def _intact(self, raw: dict[str, Any], ports: list[dict[str, Any]]) -> bool:
        """What this writer would write: its labels, the Service's ports, one ready endpoint."""
        labels = (raw.get("metadata") or {}).get("labels") or {}
        if any(labels.get(key) != value for key, value in self._labels().items()):
            return False
        if _port_set(raw.get("ports") or []) != _port_set(ports):
            return False
        endpoints = raw.get("endpoints") or []
        if len(endpoints) != 1:
            return not endpoints  # an empty slice has nothing to repair until it is published
        wanted, found = self._endpoint(), endpoints[0]
        conditions = found.get("conditions") or {}
        return (found.get("addresses") == wanted["addresses"] and conditions.get("ready") is True
                and conditions.get("serving") is not False and conditions.get("terminating") is not True
                and (found.get("targetRef") or {}).get("name") == (wanted.get("targetRef") or {}).get("name"))

    async def _converge(self, rule: Any, ports: list[dict[str, Any]] | None,
                        still_leading: Callable[[], bool] | None) -> SliceAction:
        for _ in range(_MAX_CONFLICTS):
            raw, state = await self.read(ports)
            if raw is not None and state is not None and not state.intact:
                # Before repairing, make sure it is not the Service that changed its ports.
                ports = await self._service_ports(refresh=True)
                state = replace(state, intact=self._intact(raw, ports))
            action = rule(state)
            if isinstance(action, NothingToDo):
                return action
            if isinstance(action, Refuse):
                self.refusals += 1
                log.warning("leader Service slice belongs to a newer term or lease; not written",
                            extra={"event": "leader_service_refused", "stored_token": action.stored_token,
                                   "reason": action.reason})
                return action
            if isinstance(action, Publish) and still_leading is not None and not still_leading():
                return NothingToDo()  # the term ended while we read: a step-down withdraws instead
            try:
                await self._write(action, raw)
                self.writes += 1
                return action
            except ApiCallFailed as error:
                if error.status != 409:
                    raise
        raise ApiCallFailed(f"endpointslice {self.name}: still conflicting after {_MAX_CONFLICTS} attempts", 409)

    async def _write(self, action: Publish | Withdraw, raw: dict[str, Any] | None) -> None:
        endpoints = [] if isinstance(action, Withdraw) else [self._endpoint()]
        if isinstance(action, Publish) and action.expected_version is None:
            body = self._new_body(action, endpoints, await self._service_ports())
            await call_json("create endpointslice", self.timeout_s,
                            self._discovery.create_namespaced_endpoint_slice, self.namespace, body)
            return
        if raw is None:  # a rule only asks to update a slice it read
            raise ApiCallFailed(f"endpointslice {self.name}: vanished; read again", 409)
        body = dict(raw)
        metadata = dict(body.get("metadata") or {})
        metadata["resourceVersion"] = action.expected_version
        metadata["annotations"] = {**(metadata.get("annotations") or {}), **self._annotations(action, bool(endpoints))}
        if isinstance(action, Publish):  # a hand edit of labels or ports is repaired by the term that owns it
            metadata["labels"] = {**(metadata.get("labels") or {}), **self._labels()}
            body["ports"] = await self._service_ports()
        body["metadata"] = metadata
        body["endpoints"] = endpoints
        await call_json("update endpointslice", self.timeout_s,
                        self._discovery.replace_namespaced_endpoint_slice, self.name, self.namespace, body)

    def _endpoint(self) -> dict[str, Any]:
        endpoint: dict[str, Any] = {"addresses": [self.pod_ip], "conditions": {"ready": True}}
        if self.pod_name:
            endpoint["targetRef"] = {"kind": "Pod", "name": self.pod_name, "namespace": self.namespace}
        return endpoint

    def _labels(self) -> dict[str, str]:
        return {SERVICE_NAME_LABEL: self.service, MANAGED_BY_LABEL: MANAGED_BY}

    def _annotations(self, action: Publish | Withdraw, routed: bool) -> dict[str, str]:
        """Token and holder on every write; the epoch (Lease UID and retired UIDs) as a publish sets it."""
        annotations = {SLICE_FENCING_ANNOTATION: str(action.token),
                       SLICE_HOLDER_ANNOTATION: self.identity if routed else ""}
        if isinstance(action, Publish) and action.lease_uid:
            annotations[SLICE_LEASE_UID_ANNOTATION] = action.lease_uid
            annotations[SLICE_RETIRED_UIDS_ANNOTATION] = ",".join(action.retired_uids)
        return annotations

    def _new_body(self, action: Publish, endpoints: list[dict[str, Any]],
                  ports: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": self._labels(),
                         "annotations": self._annotations(action, bool(endpoints))},
            "addressType": self.address_type, "endpoints": endpoints, "ports": ports,
        }

    async def _service_ports(self, refresh: bool = False) -> list[dict[str, Any]]:
        """The Service's ports, as the endpoint's: a numeric targetPort, else the port itself.
        Read once, and again (`refresh`) when the slice's ports differ from them."""
        if self._ports is None or refresh:
            service = await call_json("get service", self.timeout_s, self._core.read_namespaced_service,
                                      self.service, self.namespace)
            ports = []
            for port in (service.get("spec") or {}).get("ports") or []:
                target = port.get("targetPort")
                entry = {"port": target if isinstance(target, int) else port["port"],
                         "protocol": port.get("protocol", "TCP")}
                if port.get("name"):
                    entry["name"] = port["name"]
                ports.append(entry)
            self._ports = ports
        return self._ports


def slice_state(raw: dict[str, Any]) -> SliceState:
    metadata = raw.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    try:
        token: int | None = int(annotations.get(SLICE_FENCING_ANNOTATION, ""))
    except ValueError:
        token = None
    addresses = tuple(address for endpoint in raw.get("endpoints") or []
                      for address in endpoint.get("addresses") or [])
    retired = tuple(uid for uid in str(annotations.get(SLICE_RETIRED_UIDS_ANNOTATION) or "").split(",") if uid)
    return SliceState(token, addresses, str(metadata.get("resourceVersion") or ""),
                      str(annotations.get(SLICE_LEASE_UID_ANNOTATION) or "") or None, retired)


def _port_set(ports: list[dict[str, Any]]) -> set[tuple[Any, Any, Any]]:
    return {(port.get("name") or "", port.get("port"), port.get("protocol") or "TCP") for port in ports}


class LeaderRoute:
    """Keeps the slice in step with the published role. `on_snapshot` is a StatusBoard listener;
    `current` (the board's fresh snapshot) is asked again right before a publish is written."""

    RETRY_S = 1.0

    def __init__(self, endpoints: LeaderEndpoints, current: Callable[[], dict[str, Any]] | None = None) -> None:
        self.endpoints = endpoints
        self._current = current
        self._desired: Term | None = None
        self._published: Term | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Every change, and every heartbeat: a leader re-checks its slice then."""
        self._desired = _term_of(snapshot)
        if self._desired is not None or self._published is not None:
            self._wake.set()

    async def run(self) -> None:
        await reconcile_on_wake(self._wake, self._reconcile, self.RETRY_S, log,
                                "leader Service not updated; retrying", "leader_service_failed")

    async def withdraw_now(self) -> None:
        """Before a release: leave the Service while still the holder (errors are logged only)."""
        self._desired = None
        try:
            await self._reconcile()
        except ApiCallFailed as error:
            log.error("could not leave the leader Service before releasing",
                      extra={"event": "leader_service_failed", "error": str(error)})

    def _still_leading(self, term: Term) -> bool:
        return self._current is None or (_term_of(self._current()) or (None, None))[0] == term[0]

    async def _reconcile(self) -> None:
        async with self._lock:
            desired = self._desired
            if desired is not None:
                # Marked before the write: a write that times out may still have landed, and a
                # step-down must then withdraw it (a withdrawal of a slice that is not ours is a no-op).
                self._published = desired
                token, lease_uid = desired
                action = await self.endpoints.publish(token, lease_uid, lambda: self._still_leading(desired))
                if isinstance(action, Publish):
                    log.info("leader Service routes here", extra={"event": "leader_service_published",
                                                                  "term": token, "lease_uid": lease_uid})
            elif self._published is not None:
                token, lease_uid = self._published
                action = await self.endpoints.withdraw(token, lease_uid)
                self._published = None
                if isinstance(action, Withdraw):
                    log.info("left the leader Service", extra={"event": "leader_service_withdrawn"})


Term = tuple[int, str | None]
"""A leader's term as the slice records it: its fencing token and its Lease's UID."""


def _term_of(snapshot: dict[str, Any]) -> Term | None:
    if not snapshot["is_leader"] or snapshot["fencing_token"] is None:
        return None
    return snapshot["fencing_token"], snapshot.get("lease_uid")
