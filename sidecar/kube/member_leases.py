"""`MemberStore` over labelled coordination.k8s.io/v1 Leases (one per member), raw JSON.

Calls: list and watch with `labelSelector=lease-sidecar.io/election=<election>`, create, update
(carrying the resourceVersion it read) and delete (with a resourceVersion precondition). Every
call has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from sidecar.core.lock import BackendUnavailable, Conflict, WatchExpired
from sidecar.core.members import ELECTION_LABEL, MemberRecord, election_label_value
from sidecar.kube.calls import ApiCallFailed, call_json

RequestObserver = Callable[[str, str, float], None]

REQUEST_VERBS = ("member_list", "member_create", "member_update", "member_delete")
"""The verbs of MemberLeaseStore's bounded calls (its watch reports "member_watch": "ok" when the
stream opens, else the HTTP status, "timeout" or "error", as the election's watch does)."""
REQUEST_RESULTS = ("ok", "timeout", "error")
"""The results those calls may report; an HTTP error status is reported as its code."""


class MemberLeaseStore:
    def __init__(self, api_client: ApiClient, namespace: str, lease_name: str,
                 observe_request: RequestObserver | None = None) -> None:
        self.namespace = namespace
        self.lease_name = lease_name
        self.selector = f"{ELECTION_LABEL}={election_label_value(lease_name)}"
        self._api = CoordinationV1Api(api_client)
        self._observe = observe_request or (lambda verb, result, seconds: None)

    async def list(self, timeout_s: float) -> tuple[dict[str, tuple[MemberRecord, str]], str]:
        listing = await self._call("member_list", timeout_s, self._api.list_namespaced_lease, self.namespace,
                                   label_selector=self.selector)
        items = {}
        for lease in listing.get("items") or []:
            metadata = lease.get("metadata") or {}
            items[metadata.get("name", "")] = (MemberRecord.from_lease(lease), str(metadata.get("resourceVersion")))
        return items, str((listing.get("metadata") or {}).get("resourceVersion") or "")

    async def put(self, name: str, record: MemberRecord, version: str | None, timeout_s: float) -> str:
        body = record.to_lease(name, self.namespace, self.lease_name)
        if version is None:
            lease = await self._call("member_create", timeout_s, self._api.create_namespaced_lease,
                                     self.namespace, body)
        else:
            body["metadata"]["resourceVersion"] = version
            lease = await self._call("member_update", timeout_s, self._api.replace_namespaced_lease,
                                     name, self.namespace, body)
        return str((lease.get("metadata") or {}).get("resourceVersion"))

    async def delete(self, name: str, version: str | None, timeout_s: float) -> None:
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if version is not None:
            options["preconditions"] = {"resourceVersion": version}
        try:
            await self._call("member_delete", timeout_s, self._api.delete_namespaced_lease, name, self.namespace,
                             body=options)
        except Conflict:
            pass  # it changed since: the member is back, leave it
        except BackendUnavailable as error:
            cause = error.__cause__
            if not (isinstance(cause, ApiCallFailed) and cause.status == 404):
                raise  # a 404 is what was asked for: the record is gone

    async def watch(self, version: str, idle_timeout_s: float) -> AsyncIterator[tuple[str, MemberRecord | None, str]]:
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(1.0, idle_timeout_s)):
                response = await self._api.list_namespaced_lease(
                    self.namespace, label_selector=self.selector, watch=True, resource_version=version,
                    allow_watch_bookmarks=True, timeout_seconds=max(1, int(idle_timeout_s)),
                    _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=idle_timeout_s + 5))
        except (ApiException, aiohttp.ClientError, TimeoutError, OSError) as error:
            self._observe("member_watch", "timeout" if isinstance(error, TimeoutError) else
                          str(error.status) if isinstance(error, ApiException) and error.status else "error",
                          time.monotonic() - started)
            raise BackendUnavailable(f"watch members: {error!r}") from error
        # As the election's watch reports it: "ok" for an answer that opens the stream, else its status.
        self._observe("member_watch", "ok" if 200 <= response.status <= 299 else str(response.status),
                      time.monotonic() - started)
        try:
            if not 200 <= response.status <= 299:
                raise (WatchExpired if response.status == 410 else BackendUnavailable)(
                    f"watch members: HTTP {response.status}")
            while line := await response.content.readline():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise (WatchExpired if obj.get("code") == 410 else BackendUnavailable)(
                        f"watch members: {obj.get('message')}")
                metadata = obj.get("metadata") or {}
                name, rv = metadata.get("name", ""), str(metadata.get("resourceVersion") or "")
                if kind in ("ADDED", "MODIFIED"):
                    yield name, MemberRecord.from_lease(obj), rv
                elif kind == "DELETED":
                    yield name, None, rv
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
            raise BackendUnavailable(f"watch members: {error!r}") from error
        finally:
            response.release()

    async def _call(self, verb: str, timeout_s: float, method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        started = time.monotonic()
        result = "error"
        try:
            body = await call_json(verb, timeout_s, method, *args, **kwargs)
            result = "ok"
            return body
        except ApiCallFailed as error:
            result = str(error.status) if error.status is not None else "timeout" if error.timed_out else "error"
            if error.status == 409:
                raise Conflict(f"{verb}: conflict") from error
            raise BackendUnavailable(str(error)) from error
        finally:
            self._observe(verb, result, time.monotonic() - started)
