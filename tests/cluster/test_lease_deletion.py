"""Deleting the Lease never makes two leaders, even when the leader cannot see the deletion.

The leader is cut off from the apiserver (a black-holed TCP proxy between it and 127.0.0.1:16443)
or frozen (SIGSTOP), then `kubectl delete lease`. Before issue 12 a standby recreated the Lease at
once and led while the old leader still reported leader until its renew deadline. Now a
candidate that sees the deletion waits one lease duration from then (election.py, rules F2, F3).

Checked from the processes' own logs (tests/cluster/claims.py: every claim of leadership, on the
machine's monotonic clock): no two claims of different processes ever overlap, and no term starts
before one lease duration after the deletion was issued. Measured figures are printed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import sidecars
from tests.cluster.blackhole import BlackHoleProxy
from tests.cluster.claims import Claim, claims_from_log, overlapping
from tests.cluster.kube import get_lease, kubectl
from tests.conftest import localcluster

TTL_S = 4.0
LEASE = "doomed"
ROUNDS = 3
DEBUG = ("--log-level", "debug")


@pytest.fixture()
def fleet() -> Iterator[list[sidecars.Sidecar]]:
    group: list[sidecars.Sidecar] = []
    yield group
    for sidecar in group:
        if sidecar.alive():
            os.kill(sidecar.process.pid, signal.SIGCONT)
    sidecars.stop_all(group)


def leader_among(fleet: list[sidecars.Sidecar], skip: sidecars.Sidecar | None = None) -> sidecars.Sidecar | None:
    for sidecar in fleet:
        if sidecar is not skip and sidecar.alive() and (sidecar.leader() or {}).get("is_leader"):
            return sidecar
    return None


def next_leader(fleet: list[sidecars.Sidecar], old: sidecars.Sidecar, issued: float,
                timeout_s: float) -> tuple[sidecars.Sidecar, float]:
    """The first other process to report leader, and how long after `issued` it did."""
    while time.monotonic() - issued < timeout_s:
        new = leader_among(fleet, skip=old)
        if new is not None:
            return new, time.monotonic() - issued
        time.sleep(0.01)
    raise AssertionError(f"no new leader within {timeout_s}s")


def wait_rejoined(old: sidecars.Sidecar, new: sidecars.Sidecar) -> None:
    """The old leader is back, a standby that sees the new holder."""
    sidecars.wait_for(lambda: (old.leader() or {}).get("holder") == new.identity, 3 * TTL_S)
    assert not old.leader()["is_leader"]


def all_claims(fleet: list[sidecars.Sidecar]) -> list[Claim]:
    return [c for s in fleet for c in claims_from_log(str(s.log_path), s.logs())]


def delete_lease(namespace: str) -> float:
    """Issues `kubectl delete lease`; returns the monotonic time just before (the earliest the
    deletion can have happened)."""
    issued = time.monotonic()
    kubectl("delete", "lease", LEASE, "-n", namespace)
    return issued


def check(fleet: list[sidecars.Sidecar], deletions: list[float], holder_may_renew: bool = False) -> list[Claim]:
    claims = sorted(all_claims(fleet), key=lambda c: c.start_mono)
    assert not overlapping(claims), "two leaders at once:\n" + "\n".join(f"{a}\n{b}" for a, b in overlapping(claims))
    # Nobody may begin a term within one lease duration of the change its holder could not see;
    # except, when the record still names it (`holder_may_renew`), the holder itself (rule O).
    def holder_at(moment: float) -> str | None:
        return next((c.process for c in claims if c.start_mono <= moment < c.end_mono), None)

    early = [(round(c.start_mono - issued, 3), c) for c in claims for issued in deletions
             if issued < c.start_mono < issued + TTL_S
             and not (holder_may_renew and c.process == holder_at(issued))]
    assert not early, f"terms begun too soon after the change: {early}"
    # A term's token is one more than the last; one process may report the same token twice in a
    # row: it reported standby when its renew deadline passed (frozen), then the renewal it sent on
    # waking still found the record its own (compare-and-swap), so the same term went on.
    terms = [c for i, c in enumerate(claims)
             if i == 0 or (c.token, c.process) != (claims[i - 1].token, claims[i - 1].process)]
    tokens = [c.token for c in terms]
    assert tokens == sorted(set(tokens)), [(c.process, c.token) for c in claims]
    return claims


def test_deleted_lease_with_the_leader_cut_off_never_makes_two_leaders(
        fleet: list[sidecars.Sidecar], namespace: str, tmp_path: Path, cluster: localcluster.Paths) -> None:
    proxies: dict[str, BlackHoleProxy] = {}
    try:
        for index in range(3):
            identity = f"cut-{index}"
            proxy = proxies[identity] = BlackHoleProxy()
            proxy.start()
            kubeconfig = proxy.kubeconfig(cluster.kubeconfig, tmp_path / identity / "kubeconfig")
            fleet.append(sidecars.start(identity, LEASE, namespace, tmp_path, *DEBUG, kubeconfig=kubeconfig))
        sidecars.wait_for(lambda: leader_among(fleet), TTL_S + 10)
        deletions, took = [], []
        for _ in range(ROUNDS):
            old = leader_among(fleet)
            assert old is not None
            proxies[old.identity].cut()
            issued = delete_lease(namespace)
            new, seconds = next_leader(fleet, old, issued, 3 * TTL_S)
            deletions.append(issued)
            took.append(seconds)
            # Cut off for at least a lease duration, whoever leads meanwhile: the old leader must
            # step down by its own deadline, not because the deletion reached it.
            time.sleep(max(0.0, issued + TTL_S - time.monotonic()))
            proxies[old.identity].heal()
            wait_rejoined(old, new)
    finally:
        for proxy in proxies.values():
            proxy.close()
    claims = check(fleet, deletions)
    print(f"leader cut off, lease deleted: new leader after {', '.join(f'{t:.2f}s' for t in took)} "
          f"(lease {TTL_S:g}s); {len(claims)} terms, no overlap")


@pytest.mark.parametrize("pause_s", [1.0, 2 * TTL_S])
def test_deleted_lease_with_the_leader_frozen_never_makes_two_leaders(
        pause_s: float, fleet: list[sidecars.Sidecar], namespace: str, tmp_path: Path,
        cluster: localcluster.Paths) -> None:
    for index in range(3):
        fleet.append(sidecars.start(f"frozen-{index}", LEASE, namespace, tmp_path, *DEBUG))
    sidecars.wait_for(lambda: leader_among(fleet), TTL_S + 10)
    deletions, took, frozen = [], [], []
    for _ in range(ROUNDS):
        old = leader_among(fleet)
        assert old is not None
        os.kill(old.process.pid, signal.SIGSTOP)
        frozen.append(old)
        issued = delete_lease(namespace)
        if pause_s < TTL_S:  # woken before anyone may lead: it sees the deletion and steps down
            time.sleep(max(0.0, issued + pause_s - time.monotonic()))
            os.kill(old.process.pid, signal.SIGCONT)
            new, seconds = next_leader(fleet, old, issued, 3 * TTL_S)
        else:  # still frozen when the next leader comes
            new, seconds = next_leader(fleet, old, issued, 3 * TTL_S)
            time.sleep(max(0.0, issued + pause_s - time.monotonic()))
            os.kill(old.process.pid, signal.SIGCONT)
        deletions.append(issued)
        took.append(seconds)
        wait_rejoined(old, new)
    claims = check(fleet, deletions)
    if pause_s > TTL_S:
        # Frozen past its deadline: on waking it saw the new holder first, but the deadline is what
        # ended its term, and its log says so.
        ended = {(c.process, c.token): c.reason for c in claims}
        for old in frozen:
            reasons = [r for (p, _), r in ended.items() if p == str(old.log_path)]
            assert "renew deadline passed" in reasons, reasons
    print(f"leader frozen {pause_s:g}s, lease deleted: new leader after {', '.join(f'{t:.2f}s' for t in took)} "
          f"(lease {TTL_S:g}s); {len(claims)} terms, no overlap")


def rewrite_lease(namespace: str, change: str) -> float:
    """A third party's write to the record (kubectl replace); returns the monotonic time before."""
    lease = get_lease(namespace, LEASE)
    assert lease is not None
    if change == "empty-holder":  # not a release: the duration stays, no fresh times
        lease["spec"]["holderIdentity"] = ""
    else:
        lease["spec"]["leaseDurationSeconds"] = 1
    issued = time.monotonic()
    kubectl("replace", "-f", "-", "-n", namespace, stdin=json.dumps(lease))
    return issued


@pytest.mark.parametrize("change", ["empty-holder", "shrink"])
def test_a_rewritten_record_with_the_leader_frozen_never_makes_two_leaders(
        change: str, fleet: list[sidecars.Sidecar], namespace: str, tmp_path: Path,
        cluster: localcluster.Paths) -> None:
    for index in range(3):
        fleet.append(sidecars.start(f"rewritten-{index}", LEASE, namespace, tmp_path, *DEBUG))
    sidecars.wait_for(lambda: leader_among(fleet), TTL_S + 10)
    changes, outcomes = [], []
    for _ in range(2):
        old = leader_among(fleet)
        assert old is not None
        os.kill(old.process.pid, signal.SIGSTOP)
        issued = rewrite_lease(namespace, change)
        time.sleep(1.5)
        os.kill(old.process.pid, signal.SIGCONT)
        changes.append(issued)
        # Emptied: the woken leader steps down and the next one comes a lease duration after the
        # change. Shrunk: the record is still the leader's own; it renews (under its own duration).
        sidecars.wait_for(lambda: leader_among(fleet) is not None, 3 * TTL_S)
        time.sleep(max(0.0, issued + TTL_S + 0.5 - time.monotonic()))
        now_leading = leader_among(fleet)
        assert now_leading is not None
        outcomes.append(f"{old.identity} -> {now_leading.identity}")
    claims = check(fleet, changes, holder_may_renew=change == "shrink")
    print(f"leader frozen 1.5s, {change} written by a third party: {', '.join(outcomes)}; "
          f"{len(claims)} terms, no overlap")


def test_brand_new_election_elects_its_first_leader_one_lease_duration_after_looking(
        fleet: list[sidecars.Sidecar], namespace: str, tmp_path: Path, cluster: localcluster.Paths) -> None:
    spawned = time.monotonic()
    fleet.append(sidecars.start("first", LEASE, namespace, tmp_path, *DEBUG, wait_ready=False))
    took = sidecars.wait_for(lambda: leader_among(fleet), TTL_S + 10)
    [claim] = all_claims(fleet)
    assert claim.start_mono >= spawned + TTL_S
    fence = [json.loads(line) for line in fleet[0].logs().splitlines() if '"event": "fence"' in line]
    assert fence and "no lease" in fence[0]["reason"], fence
    print(f"brand-new election: first leader {took:.2f}s after spawn (lease {TTL_S:g}s)")


EDIT_TIMING = ("--leader-lease-ttl", "8", "--leader-renewal-interval", "1", "--leader-renew-deadline", "7",
               "--heartbeat-interval", "1", "--heartbeat-ttl", "3", "--failover-timeout", "12")
"""A renew deadline close to the TTL: a cut-off leader leads up to 7 s after its last renewal."""

HAND_EDITS = {
    "shrink": {"spec": {"leaseDurationSeconds": 1}},
    "unset-duration": {"spec": {"leaseDurationSeconds": None}},
    "empty-holder": {"spec": {"holderIdentity": None}},
}


def hand_edit(namespace: str, lease: str, edit: str) -> None:
    """`kubectl patch` as an operator would type it (a merge patch of the spec)."""
    kubectl("patch", "lease", lease, "-n", namespace, "--type", "merge", "-p", json.dumps(HAND_EDITS[edit]))


@pytest.mark.parametrize("edit", sorted(HAND_EDITS))
def test_a_hand_edit_seen_first_by_a_fresh_candidate_never_makes_two_leaders(
        edit: str, fleet: list[sidecars.Sidecar], namespace: str, tmp_path: Path,
        cluster: localcluster.Paths) -> None:
    """Issue 17 item 1: the leader is cut off, an operator shortens or removes leaseDurationSeconds
    (or empties the holder), then a candidate that never saw the leader's own record starts. It
    must wait at least its own TTL from its first sight of the holder, not the edited figure."""
    # A Lease in release shape is taken at once by the first candidate (no brand-new-election wait).
    now = "2026-01-01T00:00:00.000000Z"
    kubectl("create", "-f", "-", "-n", namespace, stdin=json.dumps({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": LEASE},
        "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now}}))
    proxy = BlackHoleProxy()
    proxy.start()
    try:
        kubeconfig = proxy.kubeconfig(cluster.kubeconfig, tmp_path / "old" / "kubeconfig")
        old = sidecars.start("edit-old", LEASE, namespace, tmp_path, *DEBUG, kubeconfig=kubeconfig,
                             timing=EDIT_TIMING)
        fleet.append(old)
        sidecars.wait_for(lambda: (old.leader() or {}).get("is_leader"), 10)
        time.sleep(1.5)  # at least one renewal: the deadline is now a renewal's, not the acquisition's
        proxy.cut()
        issued = time.monotonic()
        hand_edit(namespace, LEASE, edit)
        new = sidecars.start("edit-new", LEASE, namespace, tmp_path, *DEBUG, timing=EDIT_TIMING)
        fleet.append(new)
        sidecars.wait_for(lambda: (new.leader() or {}).get("is_leader"), 25)
        since_cut_s = time.monotonic() - issued
        proxy.heal()
        sidecars.wait_for(lambda: (old.leader() or {}).get("holder") == new.identity, 20)
    finally:
        proxy.close()
    claims = sorted(all_claims(fleet), key=lambda c: c.start_mono)
    assert not overlapping(claims), "two leaders at once:\n" + "\n".join(f"{a}\n{b}" for a, b in overlapping(claims))
    assert [c.process.endswith("edit-new/sidecar.log") for c in claims][-1], claims
    assert claims[-1].token > claims[0].token
    print(f"leader cut off, {edit} by hand, fresh candidate started: new leader {since_cut_s:.2f}s after the cut "
          f"(lease 8s; the old leader's deadline up to 7s after its last renewal); no overlap")
