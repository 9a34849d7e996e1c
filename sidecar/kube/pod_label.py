"""`--label-pod`: this pod's own `lease-sidecar.io/role` label, `leader` or `standby`.

A hint for people and selectors, never a guarantee: a pod whose sidecar crashed, or whose node
was cut off, keeps `leader` until someone changes it, so several pods can carry it at once. Route
traffic with `--leader-service` instead (fenced by the term's token).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api

from sidecar.kube.calls import ApiCallFailed, call_json, reconcile_on_wake

log = logging.getLogger("lease_sidecar.kube.pod_label")

ROLE_LABEL = "lease-sidecar.io/role"


class PodRoleLabel:
    RETRY_S = 1.0

    def __init__(self, api_client: ApiClient, namespace: str, pod_name: str, timeout_s: float) -> None:
        self.namespace, self.pod_name, self.timeout_s = namespace, pod_name, timeout_s
        self._api = CoreV1Api(api_client)
        self._desired = "standby"
        self._written: str | None = None
        self._wake = asyncio.Event()
        self._wake.set()
        self._lock = asyncio.Lock()

    def on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self._desired = "leader" if snapshot["is_leader"] else "standby"
        if self._desired != self._written:
            self._wake.set()

    async def run(self) -> None:
        await reconcile_on_wake(self._wake, self._sync, self.RETRY_S, log,
                                "pod role label not updated; retrying", "pod_label_failed")

    async def stand_down(self) -> None:
        """At shutdown: `standby`, best effort."""
        self._desired = "standby"
        try:
            await self._sync()
        except ApiCallFailed as error:
            log.error("pod role label left as it was", extra={"event": "pod_label_failed", "error": str(error)})

    async def _sync(self) -> None:
        async with self._lock:
            desired = self._desired
            if desired == self._written:
                return
            patch = {"metadata": {"labels": {ROLE_LABEL: desired}}}
            await call_json("patch pod", self.timeout_s, self._api.patch_namespaced_pod, self.pod_name,
                            self.namespace, patch, _content_type="application/merge-patch+json")
            self._written = desired
