"""`--leader-service`: the leader's pod IP as the only endpoint of a selector-less Service.

A thin shell around `core.routing`: it reads the EndpointSlice, asks the rule what to write, and
writes it with the resourceVersion it read (compare-and-swap), re-reading after a conflict.
`LeaderRoute` follows the election's published role: publish on becoming leader (and re-check at
every heartbeat, so a deleted or edited slice is repaired), withdraw on stepping down; the driver
also calls `withdraw_now` before a release write, so the old leader leaves the Service first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api, DiscoveryV1Api

from sidecar.core.routing import (
    MANAGED_BY,
    SLICE_FENCING_ANNOTATION,
    SLICE_HOLDER_ANNOTATION,
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

    async def publish(self, token: int) -> SliceAction:
        return await self._converge(lambda state: publish_action(state, token, self.pod_ip))

    async def withdraw(self, token: int) -> SliceAction:
        return await self._converge(lambda state: withdraw_action(state, token, self.pod_ip))

    async def read(self) -> tuple[dict[str, Any] | None, SliceState | None]:
        try:
            raw = await call_json("get endpointslice", self.timeout_s,
                                  self._discovery.read_namespaced_endpoint_slice, self.name, self.namespace)
        except ApiCallFailed as error:
            if error.status == 404:
                return None, None
            raise
        return raw, slice_state(raw)

    async def _converge(self, rule: Any) -> SliceAction:
        for _ in range(_MAX_CONFLICTS):
            raw, state = await self.read()
            action = rule(state)
            if isinstance(action, NothingToDo):
                return action
            if isinstance(action, Refuse):
                self.refusals += 1
                log.warning("leader Service slice belongs to a newer term; not written",
                            extra={"event": "leader_service_refused", "stored_token": action.stored_token})
                return action
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
            body = self._new_body(action.token, endpoints, await self._service_ports())
            await call_json("create endpointslice", self.timeout_s,
                            self._discovery.create_namespaced_endpoint_slice, self.namespace, body)
            return
        if raw is None:  # a rule only asks to update a slice it read
            raise ApiCallFailed(f"endpointslice {self.name}: vanished; read again", 409)
        body = dict(raw)
        metadata = dict(body.get("metadata") or {})
        metadata["resourceVersion"] = action.expected_version
        metadata["annotations"] = {**(metadata.get("annotations") or {}),
                                   SLICE_FENCING_ANNOTATION: str(action.token), SLICE_HOLDER_ANNOTATION:
                                   self.identity if endpoints else ""}
        body["metadata"] = metadata
        body["endpoints"] = endpoints
        if endpoints and not body.get("ports"):
            body["ports"] = await self._service_ports()
        await call_json("update endpointslice", self.timeout_s,
                        self._discovery.replace_namespaced_endpoint_slice, self.name, self.namespace, body)

    def _endpoint(self) -> dict[str, Any]:
        endpoint: dict[str, Any] = {"addresses": [self.pod_ip], "conditions": {"ready": True}}
        if self.pod_name:
            endpoint["targetRef"] = {"kind": "Pod", "name": self.pod_name, "namespace": self.namespace}
        return endpoint

    def _new_body(self, token: int, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {SERVICE_NAME_LABEL: self.service, MANAGED_BY_LABEL: MANAGED_BY},
                         "annotations": {SLICE_FENCING_ANNOTATION: str(token), SLICE_HOLDER_ANNOTATION: self.identity}},
            "addressType": self.address_type, "endpoints": endpoints, "ports": ports,
        }

    async def _service_ports(self) -> list[dict[str, Any]]:
        """The Service's ports, as the endpoint's: a numeric targetPort, else the port itself."""
        if self._ports is None:
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
    try:
        token: int | None = int((metadata.get("annotations") or {}).get(SLICE_FENCING_ANNOTATION, ""))
    except ValueError:
        token = None
    addresses = tuple(address for endpoint in raw.get("endpoints") or []
                      for address in endpoint.get("addresses") or [])
    return SliceState(token, addresses, str(metadata.get("resourceVersion") or ""))


class LeaderRoute:
    """Keeps the slice in step with the published role. `on_snapshot` is a StatusBoard listener."""

    RETRY_S = 1.0

    def __init__(self, endpoints: LeaderEndpoints) -> None:
        self.endpoints = endpoints
        self._desired: int | None = None
        self._published: int | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Every change, and every heartbeat: a leader re-checks its slice then."""
        self._desired = snapshot["fencing_token"] if snapshot["is_leader"] else None
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

    async def _reconcile(self) -> None:
        async with self._lock:
            desired = self._desired
            if desired is not None:
                # Marked before the write: a write that times out may still have landed, and a
                # step-down must then withdraw it (a withdrawal of a slice that is not ours is a no-op).
                self._published = desired
                action = await self.endpoints.publish(desired)
                if isinstance(action, Publish):
                    log.info("leader Service routes here", extra={"event": "leader_service_published",
                                                                  "term": desired})
            elif self._published is not None:
                action = await self.endpoints.withdraw(self._published)
                self._published = None
                if isinstance(action, Withdraw):
                    log.info("left the leader Service", extra={"event": "leader_service_withdrawn"})
