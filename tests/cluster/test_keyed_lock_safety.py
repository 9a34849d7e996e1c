"""Keyed locks on the real control plane, review findings: a key's Lease deleted and created again
never lowers its token (core K4, election.py L2); no lock is released, or taken by another pod,
while its owner still holds a deadline the sidecar told it (core K2, K7), on SIGTERM and when the
app's liveness lapses."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.cluster import sidecars
from tests.cluster.kube import get_lease, json_objects, kubectl
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
        assert self.process.stdout is not None
        for event in json_objects(self.process.stdout):
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


MAX_TTL_9S = ("--lock-max-ttl", "9")  # renew deadline 6 s: longer than the shutdown grace (5 s)


def acquisitions_started(sidecar: sidecars.Sidecar, lease: str) -> list[float]:
    """When each acquisition write of `lease` by this sidecar started (its own log, CLOCK_MONOTONIC)."""
    name = lease.split("/")[1]
    started = []
    for line in sidecar.logs().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "lock_written" and entry.get("kind") == "acquire" and entry.get("lease") == name:
            started.append(entry["started_mono"])
    return started


def test_sigterm_writes_no_release_before_the_deadline_its_owner_was_told(namespace: str, tmp_path: Path) -> None:
    b = start("b", "locks", namespace, tmp_path, *MAX_TTL_9S)
    c = start("c", "locks", namespace, tmp_path, *MAX_TTL_9S)
    try:
        status, short, _ = call(c, "POST", lock_path("short", ttl="3s", wait="20s"), timeout=25)  # K3: young watch
        assert status == 200, short
        status, long, _ = call(c, "POST", lock_path("long", ttl="9s", wait="5s"), timeout=10)
        assert status == 200, long
        c.process.send_signal(signal.SIGTERM)  # the owner stops renewing; it was told these deadlines
        for told in (short, long):
            status, taken, _ = call(b, "POST", lock_path(told["key"], wait="30s"), timeout=35)
            assert status == 200 and taken["fencing_token"] > told["fencing_token"], taken
        assert c.process.wait(15) == 0
        for told in (short, long):
            started = acquisitions_started(b, told["lease"])
            assert started and min(started) >= told["valid_until_monotonic"], (told, started)
        left = "lock_left_to_expire" in c.logs()
        print(f"short: taken {min(acquisitions_started(b, short['lease'])) - short['valid_until_monotonic']:.3f} s "
              f"after its told deadline; long: {'left to expire' if left else 'released'}, taken "
              f"{min(acquisitions_started(b, long['lease'])) - long['valid_until_monotonic']:.3f} s after")
    finally:
        sidecars.stop_all([b, c])


def test_a_silent_apps_lock_is_taken_no_sooner_than_the_deadline_its_owner_was_told(
        namespace: str, tmp_path: Path) -> None:
    a = start("a", "locks", namespace, tmp_path, *MAX_TTL_9S, "--app-heartbeat-ttl", "2")
    b = start("b", "locks", namespace, tmp_path, *MAX_TTL_9S)
    app = sidecars.start_app(a)
    try:
        answers: list[Any] = []

        def acquired() -> bool:  # asked again until the app is alive and a's watch is 9 s old (K3)
            answers.append(call(a, "POST", lock_path("tenant-7/migrate", ttl="9s"))[1])
            return "owner" in answers[-1]

        sidecars.wait_for(acquired, timeout=40, interval=0.3)
        held = answers[-1]
        app.kill()  # the app falls silent: its liveness lapses 2 s after its last heartbeat
        status, taken, _ = call(b, "POST", lock_path("tenant-7/migrate", wait="30s"), timeout=35)
        assert status == 200 and taken["fencing_token"] > held["fencing_token"], taken
        started = acquisitions_started(b, held["lease"])
        assert started and min(started) >= held["valid_until_monotonic"], (held, started)
        print(f"told {held['valid_for_seconds']:.3f} s; taken {min(started) - held['valid_until_monotonic']:.3f} s "
              "after that deadline")
    finally:
        app.kill()
        sidecars.stop_all([a, b])
