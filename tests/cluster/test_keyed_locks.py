"""Keyed locks (`--locks`) on the real control plane: the local API's answers, contention between
sidecars with faults among them, the PostgreSQL fence against a lost lock's late write, and
garbage collection that never lowers a token."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import sidecars
from tests.cluster.blackhole import BlackHoleProxy
from tests.cluster.kube import kubectl

LOCKS = ("--locks", "--lock-max-ttl", "3", "--log-level", "debug")


def call(sidecar: sidecars.Sidecar, method: str, path: str, timeout: float = 10.0) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(sidecar.url + path, method=method, data=b"" if method in ("POST", "PUT") else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), dict(error.headers)


def lock_path(key: str, **query: str) -> str:
    return "/locks/" + urllib.parse.quote(key) + ("?" + urllib.parse.urlencode(query) if query else "")


def start(name: str, lease: str, namespace: str, tmp_path: Path, *extra: str, **kwargs: Any) -> sidecars.Sidecar:
    return sidecars.start(name, lease, namespace, tmp_path, *LOCKS, *extra, **kwargs)


def test_acquire_conflict_renew_release_and_token_order(namespace: str, tmp_path: Path) -> None:
    a = start("a", "locks", namespace, tmp_path)
    b = start("b", "locks", namespace, tmp_path)
    try:
        status, held, _ = call(a, "POST", lock_path("reports/daily", ttl="3s", wait="5s"))
        assert status == 200, held
        assert held["lease"].startswith(f"{namespace}/locks-lock-reports-daily-")
        assert held["valid_for_seconds"] > 0 and held["fencing_token"] > 0
        status, refused, headers = call(b, "POST", lock_path("reports/daily"))
        assert status == 409 and refused["holder"] == f"a/{held['owner']}", refused
        assert int(headers["Retry-After"]) >= 1
        status, again, _ = call(a, "POST", lock_path("reports/daily"))
        assert status == 409, again  # a second owner in the same pod
        status, renewed, _ = call(a, "PUT", lock_path("reports/daily", owner=held["owner"]))
        assert status == 200 and renewed["fencing_token"] == held["fencing_token"]
        status, seen, _ = call(b, "GET", lock_path("reports/daily"))
        assert status == 200 and seen["locked"] and seen["holder"] == f"a/{held['owner']}"
        lease_name = held["lease"].split("/")[1]
        labels = json.loads(kubectl("get", "lease", lease_name, "-n", namespace, "-o", "json"))["metadata"]
        assert labels["labels"]["lease-sidecar.io/lock-election"] == "locks"
        assert labels["annotations"]["lease-sidecar.io/lock-key"] == "reports/daily"
        status, released, _ = call(a, "DELETE", lock_path("reports/daily", owner=held["owner"]))
        assert status == 200 and released["release_written"], released
        status, taken, _ = call(b, "POST", lock_path("reports/daily", wait="5s"))
        assert status == 200 and taken["fencing_token"] > held["fencing_token"], taken
        status, lost, _ = call(a, "PUT", lock_path("reports/daily", owner=held["owner"]))
        assert status == 409, lost
    finally:
        sidecars.stop_all([a, b])
