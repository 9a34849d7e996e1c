"""Keyed locks on the real control plane, review findings: a key's Lease deleted and created again
never lowers its token (core K4, election.py L2)."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.cluster import sidecars
from tests.cluster.kube import get_lease, kubectl
from tests.cluster.test_keyed_locks import call, lock_path, start
from tests.conftest import localcluster

FENCING_ANNOTATION = "lease-sidecar.io/fencing-token"


class LeaseWatcher:
    """`kubectl get lease --watch --output-watch-events`: every event of one Lease, in order."""

    def __init__(self, namespace: str, name: str) -> None:
        binary = str(localcluster.TOOLS["kubectl"].cache_path())
        self.process = subprocess.Popen(
            [binary, "--kubeconfig", str(localcluster.Paths().kubeconfig), "get", "lease", "-n", namespace,
             f"--field-selector=metadata.name={name}", "--watch", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.events: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                buffer = buffer.lstrip()[end:]
                self.events.append(event)

    def deletion_version(self, timeout_s: float = 10) -> int:
        """The resourceVersion the DELETED event carries (the version a watching sidecar sees)."""
        sidecars.wait_for(lambda: any(event["type"] == "DELETED" for event in self.events), timeout=timeout_s)
        deleted = next(event for event in self.events if event["type"] == "DELETED")
        return int(deleted["object"]["metadata"]["resourceVersion"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._thread.join(5)


def delete_lease(namespace: str, name: str) -> int:
    """`kubectl delete lease`; returns the deletion's resourceVersion as a watch delivers it."""
    watcher = LeaseWatcher(namespace, name)
    try:
        sidecars.wait_for(lambda: watcher.events, timeout=10)  # the watch is open: ADDED came
        kubectl("delete", "lease", name, "-n", namespace)
        return watcher.deletion_version()
    finally:
        watcher.stop()


def stored_token(namespace: str, name: str) -> int:
    lease = get_lease(namespace, name)
    assert lease is not None, name
    return int(lease["metadata"]["annotations"][FENCING_ANNOTATION])


def test_a_keys_lease_deleted_and_created_again_never_lowers_its_token(namespace: str, tmp_path: Path) -> None:
    a = start("a", "locks", namespace, tmp_path)
    b = start("b", "locks", namespace, tmp_path)
    c = None
    try:
        status, first, _ = call(a, "POST", lock_path("ledger/close", wait="10s"), timeout=15)
        assert status == 200, first
        name = first["lease"].split("/")[1]
        assert call(a, "DELETE", lock_path("ledger/close", owner=first["owner"]))[1]["release_written"]
        released_deleted_at = delete_lease(namespace, name)  # a released key's Lease, deleted

        # b watched the deletion: its creation's token is above the version the deletion carried.
        status, second, _ = call(b, "POST", lock_path("ledger/close", wait="10s"), timeout=15)
        assert status == 200, second
        assert second["fencing_token"] > max(first["fencing_token"], released_deleted_at), (first, second)
        assert stored_token(namespace, name) == second["fencing_token"]
        held_deleted_at = delete_lease(namespace, name)  # under its live holder this time
        sidecars.wait_for(lambda: call(b, "PUT", lock_path("ledger/close", owner=second["owner"]))[0] == 409,
                          timeout=10)

        # A sidecar that never saw the key or either deletion: only its list's version raises it.
        c = start("c", "locks", namespace, tmp_path)
        status, third, _ = call(c, "POST", lock_path("ledger/close", wait="15s"), timeout=20)
        assert status == 200, third
        assert third["fencing_token"] > max(second["fencing_token"], held_deleted_at), (second, third)
        assert call(c, "DELETE", lock_path("ledger/close", owner=third["owner"]))[1]["release_written"]
        status, fourth, _ = call(a, "POST", lock_path("ledger/close", wait="10s"), timeout=15)
        assert status == 200 and fourth["fencing_token"] > third["fencing_token"], (third, fourth)
        print("tokens through two deletions:", [first["fencing_token"], released_deleted_at, second["fencing_token"],
                                                held_deleted_at, third["fencing_token"], fourth["fencing_token"]])
    finally:
        sidecars.stop_all([s for s in (a, b, c) if s is not None])
