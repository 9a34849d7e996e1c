"""`make demo`: three sidecars on the local control plane; crash the leader, then stop the next.

Every row of the table is a transition some sidecar reported on its own event stream
(`/leader/events`), printed in the order they arrived; the times measured are those of the rows
shown. The process signalled is the one the table shows as leader at that moment.
"""

from __future__ import annotations

import http.client
import json
import queue
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy" / "local")]

import localcluster  # noqa: E402

from tests.cluster import sidecars  # noqa: E402  (the same harness the tests use)
from tests.cluster.kube import kubectl  # noqa: E402

TTL_S = 4


@dataclass(frozen=True)
class Change:
    at_mono: float
    identity: str
    cell: str
    """What the table shows for it: "leader #2", "standby", "down"."""
    note: str = ""


def follow(sidecar: sidecars.Sidecar, changes: queue.Queue[Change]) -> None:
    """Every change `sidecar` reports on its event stream, then "down" once its process has exited."""
    try:
        with urllib.request.urlopen(sidecar.url + "/leader/events", timeout=60) as stream:
            data: list[str] = []
            for raw in stream:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    status = json.loads("".join(data))
                    data = []
                    token = f" #{status['fencing_token']}" if status["is_leader"] else ""
                    changes.put(Change(time.monotonic(), sidecar.identity, f"{status['role']}{token}"))
    except (OSError, http.client.HTTPException):
        pass  # the stream ends with the process (a cut chunk is an IncompleteRead)
    code = sidecar.process.wait()
    changes.put(Change(time.monotonic(), sidecar.identity, "down", f"{sidecar.identity} exited {code}"))


class Table:
    def __init__(self, fleet: list[sidecars.Sidecar]) -> None:
        self.cells = {s.identity: "starting" for s in fleet}
        self.changes: queue.Queue[Change] = queue.Queue()
        self.started = time.monotonic()
        for sidecar in fleet:
            threading.Thread(target=follow, args=(sidecar, self.changes), daemon=True).start()

    def leader(self) -> str | None:
        return next((name for name, cell in self.cells.items() if cell.startswith("leader")), None)

    def row(self, at_mono: float, note: str = "") -> None:
        cells = "  ".join(f"{name}: {cell:<10}" for name, cell in self.cells.items())
        print(f"  t={at_mono - self.started:6.2f}s  {cells}" + (f"  <- {note}" if note else ""), flush=True)

    def follow_until(self, condition: Callable[[Table], bool], timeout_s: float) -> float:
        """Prints each transition as it arrives until `condition` holds; returns the monotonic time
        at which the transition that made it hold was observed."""
        deadline = time.monotonic() + timeout_s
        while not condition(self):
            try:
                change = self.changes.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SystemExit(f"demo: condition not met within {timeout_s}s") from None
            if self.cells[change.identity] != change.cell or change.note:
                self.cells[change.identity] = change.cell
                if "starting" not in self.cells.values():  # from the first row on, every change is shown
                    self.row(change.at_mono, change.note)
            if condition(self):
                return change.at_mono
        return time.monotonic()

    def settle(self, seconds: float) -> None:
        """Prints whatever happens for `seconds`."""
        until = time.monotonic() + seconds
        try:
            self.follow_until(lambda _: time.monotonic() >= until, seconds + 0.1)
        except SystemExit:
            pass


def main() -> int:
    localcluster.up()
    namespace = f"demo-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    workdir = Path(tempfile.mkdtemp(prefix="lease-sidecar-demo-"))
    print(f"\nlease-sidecar demo: 3 candidates on Lease {namespace}/demo "
          f"(TTL {TTL_S}s, renew every 1s, renew deadline 2.5s)\n"
          f"A new election's first leader comes one TTL after the candidates first saw no Lease: a holder "
          f"that missed a deletion could still be leading.\n", flush=True)
    fleet: list[sidecars.Sidecar] = []
    try:
        for name in ("alpha", "bravo", "charlie"):
            fleet.append(sidecars.start(name, "demo", namespace, workdir, kubeconfig=localcluster.Paths().kubeconfig))
        by_name = {s.identity: s for s in fleet}
        table = Table(fleet)
        table.follow_until(lambda t: t.leader() is not None, TTL_S + 10)
        table.settle(1.5)
        first = table.leader()
        assert first is not None
        table.row(time.monotonic(), f"steady: one leader; SIGKILL {first}")
        killed_at = time.monotonic()
        by_name[first].process.send_signal(signal.SIGKILL)
        crash_at = table.follow_until(lambda t: t.leader() not in (None, first), TTL_S + 5)
        table.settle(1.0)

        second = table.leader()  # the leader as its own stream last reported it
        assert second is not None
        # What an app's SIGTERM handler does first (README, "Shutdown"): give the term up, so the
        # release need not wait for the deadline the app was told (election.py P2).
        table.row(time.monotonic(), f"{second}'s app resigns; SIGTERM {second}")
        termed_at = time.monotonic()
        by_name[second].post("/leader/resign")
        by_name[second].process.send_signal(signal.SIGTERM)
        graceful_at = table.follow_until(lambda t: t.leader() not in (None, second), 5)
        table.follow_until(lambda t: t.cells[second] == "down", 10)
        table.settle(0.3)

        print(f"\ncrash failover (SIGKILL, lease TTL {TTL_S}s): new leader after {crash_at - killed_at:.3f}s")
        print(f"graceful hand-over (resign, SIGTERM):   new leader after {(graceful_at - termed_at) * 1000:.0f}ms")
        print("(standbys count the TTL from when they last saw the lease change, so a crash costs at most "
              "one TTL; a release is taken as soon as the watch delivers it; without the app's resign the "
              "release waits for the deadline the app was told, at most the renew deadline)")
        return 0
    finally:
        sidecars.stop_all(fleet)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


if __name__ == "__main__":
    sys.exit(main())
