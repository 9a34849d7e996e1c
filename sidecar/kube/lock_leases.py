"""The Leases of keyed locks: one per key, named from --lock-prefix, labelled with the election and
the key's hash, the original key in an annotation; one list + watch for all of them.

Writes go through `KeyLeaseStore`, the election's `LeaseLockBackend` for one Lease that also
stamps the labels and the key annotation on every write (a replace without them would drop them).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from sidecar.core.keyed_locks import ELECTION_LABEL, KEY_ANNOTATION, KEY_LABEL, LockEvent, key_digest
from sidecar.core.lock import BackendUnavailable, Versioned, WatchExpired
from sidecar.core.record import LeaseRecord
from sidecar.kube.lease_lock import LeaseLockBackend, RequestObserver, _lines, _reason, _result, _translate


class KeyLeaseStore(LeaseLockBackend):
    """`LeaseStore` for one key's Lease."""

    def __init__(self, api_client: ApiClient, namespace: str, name: str, lock_key: str, election_label: str,
                 observe_request: RequestObserver | None = None) -> None:
        super().__init__(api_client, namespace, name, observe_request)
        self.lock_key = lock_key
        self._labels = {ELECTION_LABEL: election_label, KEY_LABEL: key_digest(lock_key)}

    def remember(self, lease: dict[str, Any]) -> Versioned:
        """A Lease seen on the watch or a list: kept as the base of the next update."""
        return self._remember(lease)

    def _stamp(self, lease: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(lease)
        metadata = body.setdefault("metadata", {})
        metadata["labels"] = {**(metadata.get("labels") or {}), **self._labels}
        metadata["annotations"] = {**(metadata.get("annotations") or {}), KEY_ANNOTATION: self.lock_key}
        return body

    async def create(self, record: LeaseRecord, timeout_s: float) -> Versioned:
        body = self._stamp({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                            "metadata": {"name": self.name, "namespace": self.namespace,
                                         "annotations": record.annotations()},
                            "spec": record.to_spec()})
        try:
            lease = await self._call("create", timeout_s, self._api.create_namespaced_lease, self.namespace, body)
        except ApiException as error:
            raise _translate(error) from error
        return self._remember(lease)

    async def update(self, record: LeaseRecord, expected_version: str, timeout_s: float) -> Versioned:
        base = self._raw.get(expected_version) or {"metadata": {"name": self.name, "namespace": self.namespace}}
        self._raw[expected_version] = self._stamp(base)
        return await super().update(record, expected_version, timeout_s)


class LockLeases:
    """All lock Leases of one election (and prefix) in one namespace."""

    def __init__(self, api_client: ApiClient, namespace: str, election_label: str, prefix: str,
                 observe_request: RequestObserver | None = None) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.election_label = election_label
        self.prefix = prefix
        self.selector = f"{ELECTION_LABEL}={election_label}"
        self._observe = observe_request
        self._plumbing = LeaseLockBackend(api_client, namespace, prefix, observe_request)

    def store_for(self, name: str, lock_key: str) -> KeyLeaseStore:
        return KeyLeaseStore(self.api_client, self.namespace, name, lock_key, self.election_label, self._observe)

    def mine(self, lease: dict[str, Any]) -> bool:
        return str((lease.get("metadata") or {}).get("name") or "").startswith(self.prefix)

    async def read(self, name: str, timeout_s: float) -> tuple[dict[str, Any] | None, str]:
        """The Lease (None: absent) and the list's resourceVersion (K4's floor when absent)."""
        listing = await self._plumbing._call("list", timeout_s, self._plumbing._api.list_namespaced_lease,
                                             self.namespace, field_selector=f"metadata.name={name}")
        items = listing.get("items") or []
        return (items[0] if items else None), str((listing.get("metadata") or {}).get("resourceVersion") or "")

    async def delete(self, name: str, version: str, timeout_s: float) -> bool:
        """Delete only the record at `version` (K6). False if it changed or is gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"resourceVersion": version}}
        try:
            await self._plumbing._call("delete", timeout_s, self._plumbing._api.delete_namespaced_lease,
                                       name, self.namespace, body=body)
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise _translate(error) from error
        return True

    async def list_and_watch(self, idle_timeout_s: float, request_timeout_s: float) -> AsyncIterator[LockEvent]:
        """One list, then every change, resumed from the last version after a quiet end; raises
        WatchExpired (410: list again) or BackendUnavailable (the caller resumes or lists again)."""
        listing = await self._plumbing._call("list", request_timeout_s, self._plumbing._api.list_namespaced_lease,
                                             self.namespace, label_selector=self.selector)
        version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
        yield LockEvent("listed", version, items=[item for item in listing.get("items") or [] if self.mine(item)])
        async for event in self.watch_from(version, idle_timeout_s):
            yield event

    async def watch_from(self, version: str, idle_timeout_s: float) -> AsyncIterator[LockEvent]:
        while True:
            response = await self._open_watch(version, idle_timeout_s)
            yield LockEvent("opened", version)  # K3: a resumed watch counts as watching from now
            try:
                async for line in _lines(response):
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise WatchExpired(f"watch locks: {obj.get('message')}")
                        raise BackendUnavailable(f"watch locks: {obj.get('message')}")
                    metadata = obj.get("metadata") or {}
                    version = str(metadata.get("resourceVersion") or version)
                    name = str(metadata.get("name") or "")
                    if kind == "BOOKMARK" or not self.mine(obj):
                        yield LockEvent("bookmark", version)
                    elif kind in ("ADDED", "MODIFIED"):
                        yield LockEvent("changed", version, name, obj)
                    elif kind == "DELETED":
                        yield LockEvent("deleted", version, name, obj)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
                raise BackendUnavailable(f"watch locks: {error!r}") from error
            finally:
                response.release()

    async def _open_watch(self, version: str, idle_timeout_s: float) -> aiohttp.ClientResponse:
        started = time.monotonic()
        observe = self._observe or (lambda verb, result, seconds: None)
        try:
            async with asyncio.timeout(max(1.0, idle_timeout_s)):
                response = await self._plumbing._api.list_namespaced_lease(
                    self.namespace, label_selector=self.selector, watch=True, resource_version=version,
                    allow_watch_bookmarks=True, timeout_seconds=max(1, int(idle_timeout_s)),
                    _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=idle_timeout_s + 5))
        except ApiException as error:
            observe("watch", _result(error.status), time.monotonic() - started)
            raise _translate(error) from error
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            observe("watch", "error", time.monotonic() - started)
            raise BackendUnavailable(f"watch locks: {error!r}") from error
        if not 200 <= response.status <= 299:
            body = await response.read()
            response.release()
            observe("watch", _result(response.status), time.monotonic() - started)
            raise _translate(ApiException(status=response.status, reason=_reason(body)))
        observe("watch", "ok", time.monotonic() - started)
        return response


