"""Ask a Lease's holder, through the Lease, to hand over to a named successor (`lease-sidecar handover`).

The request is the annotation `lease-sidecar.io/handover-to`, written with the resourceVersion
just read (a conflict re-reads and tries again). `spec.preferredHolder` is added only when the
Lease already carries a `spec.strategy` (a coordinated leader election set it up): with the
CoordinatedLeaderElection feature gate on, the apiserver refuses a preferredHolder without a
strategy (422, and the annotation sent in the same request is lost with it), and this command
never sets a strategy itself, which would change how that election works. Without the gate the
apiserver drops both fields; the answer of the write tells whether preferredHolder was kept.
Everything else in the record is left as it was.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoordinationV1Api

from sidecar.core.record import HANDOVER_ANNOTATION, LeaseRecord
from sidecar.kube.calls import ApiCallFailed, call_json

_ATTEMPTS = 5


@dataclass(frozen=True)
class HandoverRequest:
    holder: str
    """The holder when the request was written ("" if free)."""
    preferred_holder_kept: bool
    """spec.preferredHolder was sent (the Lease has a strategy) and the apiserver stored it."""
    strategy: str = ""
    """The Lease's spec.strategy as stored ("" without one: the annotation alone was sent)."""


class HandoverError(Exception):
    """The request could not be made; str(self) is one line for the user."""


async def request_handover(api_client: ApiClient, namespace: str, lease: str, successor: str,
                           timeout_s: float) -> HandoverRequest:
    api = CoordinationV1Api(api_client)
    for _ in range(_ATTEMPTS):
        current = await _read(api, namespace, lease, timeout_s)
        body = dict(current)
        metadata = dict(body.get("metadata") or {})
        metadata["annotations"] = {**(metadata.get("annotations") or {}), HANDOVER_ANNOTATION: successor}
        body["metadata"] = metadata
        spec = body.get("spec") or {}
        if spec.get("strategy"):
            body["spec"] = {**spec, "preferredHolder": successor}
        try:
            stored = await call_json("update lease", timeout_s, api.replace_namespaced_lease, lease, namespace, body)
        except ApiCallFailed as error:
            if error.status == 409:
                continue
            raise HandoverError(str(error)) from error
        record = LeaseRecord.from_lease(stored)
        return HandoverRequest(record.holder, record.preferred_holder == successor, record.strategy)
    raise HandoverError(f"lease {namespace}/{lease} kept changing; {_ATTEMPTS} attempts conflicted")


async def wait_for_holder(api_client: ApiClient, namespace: str, lease: str, successor: str,
                          timeout_s: float, poll_s: float = 0.05) -> tuple[str, float]:
    """Poll until `successor` holds the lease or `timeout_s` passes: (last holder seen, seconds waited)."""
    api = CoordinationV1Api(api_client)
    started = time.monotonic()
    holder = ""
    while True:
        holder = LeaseRecord.from_lease(await _read(api, namespace, lease, 5.0)).holder
        waited = time.monotonic() - started
        if holder == successor or waited >= timeout_s:
            return holder, waited
        await asyncio.sleep(poll_s)


async def _read(api: CoordinationV1Api, namespace: str, lease: str, timeout_s: float) -> dict[str, Any]:
    try:
        return await call_json("get lease", timeout_s, api.read_namespaced_lease, lease, namespace)
    except ApiCallFailed as error:
        if error.status == 404:
            raise HandoverError(f"lease {namespace}/{lease} does not exist") from error
        raise HandoverError(str(error)) from error
