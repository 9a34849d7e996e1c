"""`make demo`: three sidecars on the local control plane; crash the leader, then stop the next.

Shows every candidate's role live, and prints the two measured failover times.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "deploy" / "local")]

import localcluster  # noqa: E402

from tests.cluster import sidecars  # noqa: E402  (the same harness the tests use)
from tests.cluster.kube import kubectl  # noqa: E402

TTL_S = 4


def show(fleet: list[sidecars.Sidecar], started: float, note: str = "") -> None:
    cells = []
    for sidecar in fleet:
        body = sidecar.leader() if sidecar.alive() else None
        if body is None:
            cells.append(f"{sidecar.identity}: {'down':<8}")
        else:
            token = f"#{body['fencing_token']}" if body["fencing_token"] else ""
            cells.append(f"{sidecar.identity}: {body['role']:<7}{token:<3}")
    print(f"  t={time.monotonic() - started:6.2f}s  " + "  ".join(cells) + (f"  <- {note}" if note else ""),
          flush=True)


def watch_until(fleet: list[sidecars.Sidecar], started: float, condition, timeout_s: float) -> float:
    begun = time.monotonic()
    last = None
    while time.monotonic() - begun < timeout_s:
        state = [(s.leader() or {}).get("role") if s.alive() else "down" for s in fleet]
        if state != last:
            show(fleet, started)
            last = state
        if condition():
            return time.monotonic() - begun
        time.sleep(0.005)
    raise SystemExit(f"demo: condition not met within {timeout_s}s")


def main() -> int:
    localcluster.up()
    namespace = f"demo-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    workdir = Path(tempfile.mkdtemp(prefix="lease-sidecar-demo-"))
    print(f"\nlease-sidecar demo: 3 candidates on Lease {namespace}/demo "
          f"(TTL {TTL_S}s, renew every 1s, renew deadline 2.5s)\n", flush=True)
    fleet: list[sidecars.Sidecar] = []
    try:
        for name in ("alpha", "bravo", "charlie"):
            fleet.append(sidecars.start(name, "demo", namespace, workdir, kubeconfig=localcluster.Paths().kubeconfig))
        started = time.monotonic()
        watch_until(fleet, started, lambda: len(sidecars.leaders(fleet)) == 1, 10)
        time.sleep(1.5)
        show(fleet, started, "steady: one leader")

        first = next(s for s in fleet if s.identity in sidecars.leaders(fleet))
        first.kill()
        show(fleet, started, f"SIGKILL {first.identity}")
        crash_s = watch_until(fleet, started, lambda: len(sidecars.leaders(fleet)) == 1, TTL_S + 5)
        time.sleep(1.0)

        second = next(s for s in fleet if s.identity in sidecars.leaders(fleet))
        second.process.send_signal(15)
        show(fleet, started, f"SIGTERM {second.identity}")
        # Ask only the others: the stopping process's API may stall a poll while it shuts down,
        # which would time the poller, not the hand-over.
        others = [s for s in fleet if s is not second]
        graceful_s = watch_until(fleet, started, lambda: len(sidecars.leaders(others)) == 1, 5)
        exit_code = second.process.wait(10)
        show(fleet, started, f"{second.identity} exited {exit_code}")

        print(f"\ncrash failover (SIGKILL, lease TTL {TTL_S}s): new leader after {crash_s:.3f}s")
        print(f"graceful hand-over (SIGTERM):           new leader after {graceful_s * 1000:.0f}ms")
        print("(standbys count the TTL from when they last saw the lease change, so a crash costs at most "
              "one TTL; a release is taken as soon as the watch delivers it)")
        return 0
    finally:
        sidecars.stop_all(fleet)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


if __name__ == "__main__":
    sys.exit(main())
