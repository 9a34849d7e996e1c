"""Chaos on a real lease: crashes, graceful stops, restarts under the same identity, API server
outages, deletions of the Lease (also while its leader is frozen by SIGSTOP), hand edits of the
Lease while its leader is frozen (leaseDurationSeconds shortened or removed, the holder emptied,
with a candidate restarted meanwhile), and, since every
candidate's leadership follows its app (--app-heartbeat-ttl, a process heartbeating as the app),
the leader's app crashing (restarted a moment later, as a crash-looping container is), hanging
(SIGSTOP) and resigning, in a seeded random order. Afterwards, every process's own account of its
leadership (its log: each claim from the start of the write that began the term to the earlier of
its last deadline and its step-down, on the machine's one monotonic clock; tests/cluster/claims.py)
must show claims that never overlap, with fencing tokens that grow in the order the terms began."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from itertools import pairwise
from pathlib import Path

from tests.cluster import sidecars
from tests.cluster.blackhole import BlackHoleProxy
from tests.cluster.claims import claims_from_log, overlapping
from tests.cluster.kube import kubectl

CANDIDATES = 4
DURATION_S = 70.0
ACTIONS = ("kill", "term", "outage", "restart", "restart", "delete", "freeze-delete", "app-crash", "app-hang",
           "resign", "edit-shrink", "edit-unset-duration", "edit-empty-holder")
HAND_EDITS = {
    "edit-shrink": {"spec": {"leaseDurationSeconds": 1}},
    "edit-unset-duration": {"spec": {"leaseDurationSeconds": None}},
    "edit-empty-holder": {"spec": {"holderIdentity": None}},
}
"""An operator's `kubectl patch` of the Lease, done while its leader is frozen (it cannot see it)."""
APP_TTL = ("--app-heartbeat-ttl", "2")


def test_terms_never_overlap_under_chaos(namespace: str, tmp_path: Path, api_path: BlackHoleProxy) -> None:
    rng = random.Random(20261123)
    everyone: list[tuple[sidecars.Sidecar, bool]] = []  # (process, killed by SIGKILL)
    live: dict[str, sidecars.Sidecar] = {}
    apps: dict[str, subprocess.Popen[bytes]] = {}  # the app process of each live candidate
    generation = 0

    def spawn(identity: str) -> None:
        nonlocal generation
        generation += 1
        live[identity] = sidecars.start(identity, "chaos", namespace, tmp_path / f"g{generation}",
                                        "--log-level", "debug", *APP_TTL, kubeconfig=api_path.kubeconfig_path)
        apps[identity] = sidecars.start_app(live[identity])

    def end_app(identity: str) -> None:
        app = apps.pop(identity)
        app.send_signal(signal.SIGCONT)
        app.kill()
        app.wait(5)

    for index in range(CANDIDATES):
        spawn(f"chaos-{index}")
    actions = dict.fromkeys(ACTIONS, 0)
    pending = sorted(set(ACTIONS))  # each kind at least once, in a seeded order, then at random
    rng.shuffle(pending)
    try:
        deadline = time.monotonic() + DURATION_S
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 2.5))
            leaders = sidecars.leaders(list(live.values()))
            assert len(leaders) <= 1, leaders
            choice = pending[0] if pending else rng.choice(ACTIONS)
            if choice in ("kill", "term") and leaders and len(live) > 1:
                victim = live.pop(leaders[0])
                end_app(victim.identity)
                if choice == "kill":
                    victim.kill()
                    everyone.append((victim, True))
                else:
                    assert victim.terminate() == 0
                    everyone.append((victim, False))
            elif choice == "outage":
                with api_path.outage():
                    time.sleep(rng.uniform(1.0, 4.0))
            elif choice == "restart":
                missing = [f"chaos-{i}" for i in range(CANDIDATES) if f"chaos-{i}" not in live]
                if not missing:
                    continue
                spawn(rng.choice(missing))
            elif choice == "delete":
                kubectl("delete", "lease", "chaos", "-n", namespace, check=False)
            elif choice == "freeze-delete" and leaders:
                # The leader cannot see the deletion; frozen sometimes past the lease duration.
                frozen = live[leaders[0]]
                os.kill(frozen.process.pid, signal.SIGSTOP)
                try:
                    kubectl("delete", "lease", "chaos", "-n", namespace, check=False)
                    time.sleep(rng.uniform(0.5, 6.0))
                finally:
                    os.kill(frozen.process.pid, signal.SIGCONT)
            elif choice in HAND_EDITS and leaders:
                # Frozen, sometimes past its deadline; a candidate restarted meanwhile sees the
                # edited record first (issue 17 item 1).
                frozen = live[leaders[0]]
                os.kill(frozen.process.pid, signal.SIGSTOP)
                try:
                    kubectl("patch", "lease", "chaos", "-n", namespace, "--type", "merge", "-p",
                            json.dumps(HAND_EDITS[choice]), check=False)
                    missing = [f"chaos-{i}" for i in range(CANDIDATES) if f"chaos-{i}" not in live]
                    if missing:
                        spawn(rng.choice(missing))
                    time.sleep(rng.uniform(0.5, 4.0))
                finally:
                    os.kill(frozen.process.pid, signal.SIGCONT)
            elif choice == "app-crash" and leaders:
                end_app(leaders[0])
                time.sleep(rng.uniform(0.5, 3.0))  # restarted after a back-off
                apps[leaders[0]] = sidecars.start_app(live[leaders[0]])
            elif choice == "app-hang" and leaders:
                os.kill(apps[leaders[0]].pid, signal.SIGSTOP)
                try:
                    time.sleep(rng.uniform(1.0, 4.0))
                finally:
                    os.kill(apps[leaders[0]].pid, signal.SIGCONT)
            elif choice == "resign" and leaders:
                live[leaders[0]].post(f"/leader/resign?sit_out={rng.uniform(0, 2):.2f}")
            else:
                continue
            actions[choice] += 1
            if choice in pending:
                pending.remove(choice)
        try:
            sidecars.wait_for(lambda: len(sidecars.leaders(list(live.values()))) == 1, 15)
        except AssertionError:
            states = {name: sidecar.leader() for name, sidecar in live.items()}
            raise AssertionError(f"not one leader at the end (actions {actions}): {states}") from None
    finally:
        for identity in list(apps):
            end_app(identity)
        for sidecar in live.values():
            os.kill(sidecar.process.pid, signal.SIGCONT)
            sidecar.terminate()
            everyone.append((sidecar, False))
        sidecars.stop_all([s for s, _ in everyone])

    claims = sorted((c for s, _ in everyone for c in claims_from_log(f"{s.identity}@{s.log_path}", s.logs())),
                    key=lambda c: c.start_mono)
    assert len(claims) >= 4, (actions, claims)
    assert all(actions.values()), f"some kinds of chaos never happened: {actions}"
    for sidecar, killed in everyone:
        if not killed:
            open_claims = [c for c in claims if c.process.endswith(str(sidecar.log_path)) and
                           c.stepped_down_mono == float("inf")]
            assert not open_claims, f"{sidecar.identity} exited as leader without saying so: {open_claims}"
    assert not overlapping(claims), "overlap:\n" + "\n".join(f"{a}\n{b}" for a, b in overlapping(claims))
    for earlier, later in pairwise(claims):
        assert later.token > earlier.token, f"token did not grow: {earlier} then {later}"
    print(f"{len(claims)} terms, actions {actions}, no overlap")
