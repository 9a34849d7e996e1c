"""`--handover-drain-timeout` on the real control plane (issue 18 item 6): after SIGTERM the leader
keeps leading, renewing, with `draining: true`, until its app resigns or the timeout; then it
releases and exits, and a standby takes over; no two claims overlap (each process's own log)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.cluster import sidecars
from tests.cluster.claims import claims_from_log, overlapping

LEASE = "drain"
DEBUG = ("--log-level", "debug")


@pytest.mark.parametrize("ending", ["app-resigns", "timeout"])
def test_a_graceful_release_drains_until_the_app_resigns_or_the_timeout(
        ending: str, namespace: str, tmp_path: Path) -> None:
    drain_s = 30.0 if ending == "app-resigns" else 3.0
    first = sidecars.start("drainer", LEASE, namespace, tmp_path, *DEBUG, "--handover-drain-timeout", f"{drain_s:g}s")
    group = [first]
    try:
        sidecars.wait_for(lambda: (first.leader() or {}).get("is_leader"), 15)
        group.append(sidecars.start("heir", LEASE, namespace, tmp_path, *DEBUG))
        heir = group[1]
        sidecars.wait_for(lambda: (heir.leader() or {}).get("holder") == "drainer", 5)
        first.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        sidecars.wait_for(lambda: (first.leader() or {}).get("draining") is True, 5)
        body = first.leader()
        assert body["is_leader"] is True and body["role"] == "leader", body
        deadline = body["valid_until_monotonic"]
        # Renewals go on while draining: the deadline moves (renewal interval 1 s).
        sidecars.wait_for(lambda: ((first.leader() or {}).get("valid_until_monotonic") or 0) > deadline, 5)
        assert heir.leader()["is_leader"] is False
        if ending == "app-resigns":
            status, answer = first.post("/leader/resign")
            assert status == 200 and answer["is_leader"] is False and answer["draining"] is False, answer
        assert first.process.wait(drain_s + 10) == 0
        ended = time.monotonic() - signalled
        sidecars.wait_for(lambda: (heir.leader() or {}).get("is_leader"), 5)
        if ending == "timeout":
            assert ended >= drain_s
        else:
            assert ended < drain_s
    finally:
        for sidecar in group:
            if sidecar.alive():
                sidecar.terminate()
        sidecars.stop_all(group)
    claims = sorted((c for s in group for c in claims_from_log(str(s.log_path), s.logs())), key=lambda c: c.start_mono)
    assert not overlapping(claims), overlapping(claims)
    reasons = [c.reason for c in claims if c.process.endswith("drainer/sidecar.log")]
    assert reasons[-1] == ("resigned" if ending == "app-resigns" else "shutting down"), reasons
    print(f"drain ({ending}): leader released and exited {ended:.2f}s after SIGTERM (drain timeout {drain_s:g}s)")
