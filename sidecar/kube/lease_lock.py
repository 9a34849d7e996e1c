"""`LeaseStore` over a coordination.k8s.io/v1 Lease, with kubernetes-asyncio.

Raw JSON in and out (no model round-trip), so MicroTime keeps six digits and fields this code
does not know (labels, other annotations, owner references) survive every update.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from sidecar.core.lock import BackendUnavailable, Conflict, LockError, Versioned, WatchEvent, WatchExpired
from sidecar.core.record import FENCING_ANNOTATION, MANAGED_ANNOTATIONS, LeaseRecord, parse_fencing_token

log = logging.getLogger("lease_sidecar.kube.lease_lock")

RequestObserver = Callable[[str, str, float], None]
"""(verb, result, seconds): for the API request histogram."""

REQUEST_VERBS = ("get", "list", "create", "update", "watch")
"""Every verb LeaseLockBackend reports to its RequestObserver."""
REQUEST_RESULTS = ("ok", "timeout", "error")
"""The results any of them may report; an HTTP error status is reported as its code ("409", "403")."""

_RAW_CACHE_SIZE = 8


class LeaseLockBackend:
    def __init__(self, api_client: ApiClient, namespace: str, name: str,
                 observe_request: RequestObserver | None = None) -> None:
        self.key = f"{namespace}/{name}"
        self.namespace = namespace
        self.name = name
        self._api = CoordinationV1Api(api_client)
        self._observe = observe_request or (lambda verb, result, seconds: None)
        self._raw: dict[str, dict[str, Any]] = {}
        self.uid: str | None = None
        self.absent_version: str | None = None
        """The collection's resourceVersion when the Lease was last seen absent (see LeaseStore)."""
        """The Lease's metadata.uid as last observed (None before any): a new uid is a new Lease."""
        self._ignored_token: object = None
        """The last fencing-token annotation ignored (election.py L2), so that it is logged once."""

    # ------------------------------------------------------------------ storage

    async def get(self, timeout_s: float) -> Versioned | None:
        started = time.monotonic()
        try:
            lease = await self._call("get", timeout_s, self._api.read_namespaced_lease,
                                     self.name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                # A 404 carries no version; a list does (the collection's), and a creation's
                # fencing token must exceed it (election.py, L2). It may find the Lease back.
                return await self._list_one(max(0.1, timeout_s - (time.monotonic() - started)))
            raise _translate(error) from error
        return self._remember(lease)

    async def _list_one(self, timeout_s: float) -> Versioned | None:
        try:
            listing = await self._call("list", timeout_s, self._api.list_namespaced_lease, self.namespace,
                                       field_selector=f"metadata.name={self.name}")
        except ApiException as error:
            raise _translate(error) from error
        items = listing.get("items") or []
        if items:
            return self._remember(items[0])
        self._note_absence((listing.get("metadata") or {}).get("resourceVersion"))
        return None

    def _note_absence(self, version: object) -> None:
        self.absent_version = str(version) if version else None

    async def create(self, record: LeaseRecord, timeout_s: float) -> Versioned:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "annotations": record.annotations()},
            "spec": record.to_spec(),
        }
        try:
            lease = await self._call("create", timeout_s, self._api.create_namespaced_lease,
                                     self.namespace, body)
        except ApiException as error:
            raise _translate(error) from error
        return self._remember(lease)

    async def update(self, record: LeaseRecord, expected_version: str, timeout_s: float) -> Versioned:
        base = self._raw.get(expected_version) or {"metadata": {"name": self.name, "namespace": self.namespace}}
        body = copy.deepcopy(base)
        body.update(apiVersion="coordination.k8s.io/v1", kind="Lease", spec=record.to_spec())
        metadata = body.setdefault("metadata", {})
        metadata["resourceVersion"] = expected_version
        annotations = metadata.get("annotations") or {}
        for key in MANAGED_ANNOTATIONS:
            annotations.pop(key, None)
        annotations.update(record.annotations())
        metadata["annotations"] = annotations
        try:
            lease = await self._call("update", timeout_s, self._api.replace_namespaced_lease,
                                     self.name, self.namespace, body)
        except ApiException as error:
            if error.status == 404:
                raise Conflict(f"{self.key} was deleted") from error
            raise _translate(error) from error
        return self._remember(lease)

    async def watch(self, idle_timeout_s: float, request_timeout_s: float = 5.0) -> AsyncIterator[WatchEvent]:
        """The current state (one list), then each change, for as long as the stream is healthy.

        Each watch request asks the server to end it after `idle_timeout_s`; it is then resumed
        from the last version seen (events and bookmarks), so a quiet standby costs one request
        per `idle_timeout_s`. A socket silent for longer than that is treated as broken.
        """
        selector = f"metadata.name={self.name}"
        listing = await self._call("list", request_timeout_s, self._api.list_namespaced_lease,
                                   self.namespace, field_selector=selector)
        items = listing.get("items") or []
        version = (listing.get("metadata") or {}).get("resourceVersion")
        if not items:
            self._note_absence(version)
        yield WatchEvent(self._remember(items[0]) if items else None)
        while True:
            response = await self._open_watch(selector, version, idle_timeout_s)
            try:
                async for line in _lines(response):
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise WatchExpired(f"watch {self.key}: {obj.get('message')}")
                        raise BackendUnavailable(f"watch {self.key}: {obj.get('message')}")
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if kind in ("ADDED", "MODIFIED"):
                        yield WatchEvent(self._remember(obj))
                    elif kind == "DELETED":
                        # The deleted object's version: the deletion's revision (or, on older
                        # servers, its last write's; a token is one above it either way).
                        self._note_absence((obj.get("metadata") or {}).get("resourceVersion"))
                        yield WatchEvent(None)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
                raise BackendUnavailable(f"watch {self.key}: {error!r}") from error
            finally:
                response.release()

    async def _open_watch(self, selector: str, version: str | None, idle_timeout_s: float) -> aiohttp.ClientResponse:
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(1.0, idle_timeout_s)):
                response = await self._api.list_namespaced_lease(
                    self.namespace, field_selector=selector, watch=True, resource_version=version,
                    allow_watch_bookmarks=True, timeout_seconds=max(1, int(idle_timeout_s)),
                    _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=idle_timeout_s + 5))
        except ApiException as error:
            self._observe("watch", _result(error.status), time.monotonic() - started)
            raise _translate(error) from error
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            self._observe("watch", "timeout" if isinstance(error, TimeoutError) else "error",
                          time.monotonic() - started)
            raise BackendUnavailable(f"watch {self.key}: {error!r}") from error
        if not 200 <= response.status <= 299:
            body = await response.read()
            response.release()
            self._observe("watch", _result(response.status), time.monotonic() - started)
            raise _translate(ApiException(status=response.status, reason=_reason(body)))
        self._observe("watch", "ok", time.monotonic() - started)
        return response

    # ------------------------------------------------------------------ plumbing

    async def _call(self, verb: str, timeout_s: float, method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        started = time.monotonic()
        result = "error"
        try:
            # Both bounds: aiohttp's for the socket, asyncio's for everything around it (TLS, DNS).
            async with asyncio.timeout(timeout_s):
                response = await method(*args, _preload_content=False, _request_timeout=timeout_s, **kwargs)
                body = await response.read()
            # Without preloading, kubernetes-asyncio leaves the status check to the caller.
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=_reason(body))
            result = "ok"
            return json.loads(body)
        except ApiException as error:
            result = _result(error.status)
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
            result = "timeout" if isinstance(error, TimeoutError) else "error"
            raise BackendUnavailable(f"{verb} {self.key}: {error!r}") from error
        finally:
            self._observe(verb, result, time.monotonic() - started)

    def _remember(self, lease: dict[str, Any]) -> Versioned:
        metadata = lease.get("metadata") or {}
        version = str(metadata.get("resourceVersion") or "")
        self.uid = str(metadata.get("uid") or "") or self.uid
        self._raw[version] = lease
        while len(self._raw) > _RAW_CACHE_SIZE:
            self._raw.pop(next(iter(self._raw)))
        self._warn_of_an_ignored_token(lease, version)
        return Versioned(LeaseRecord.from_lease(lease), version)

    def _warn_of_an_ignored_token(self, lease: dict[str, Any], version: str) -> None:
        """election.py L2: a token annotation no term could have written is ignored; say so once
        per value (the holder's renewals repeat it until it writes its own)."""
        value = ((lease.get("metadata") or {}).get("annotations") or {}).get(FENCING_ANNOTATION)
        _, why = parse_fencing_token(value, version)
        if not why:
            self._ignored_token = None
            return
        if value == self._ignored_token:
            return
        self._ignored_token = value
        log.warning("fencing token annotation ignored", extra={
            "event": "fencing_token_ignored", "lease": self.key, "resource_version": version,
            "annotation": str(value)[:64], "why": why})


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    while True:
        line = await response.content.readline()
        if not line:
            return
        if line.strip():
            yield line


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", ""))[:300]
    except (ValueError, AttributeError):
        return body[:300].decode(errors="replace")


def _result(status: int | None) -> str:
    return str(status) if status else "error"


def _translate(error: ApiException) -> LockError:
    if error.status == 409:
        return Conflict(f"conflict: {error.reason}")
    if error.status == 410:
        return WatchExpired(str(error.reason))
    return BackendUnavailable(f"HTTP {error.status}: {error.reason}")
