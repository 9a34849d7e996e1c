"""Exactly once in real pods, under every fault: the example beat (APScheduler, several jobs each
ticking every second, docs/beat-example.md) in two namespaces at once, on one seeded schedule of
faults:

  fenced  every run claimed in the tick ledger and written in the claim's transaction with its
          term's fencing token (lease_sidecar_client.psycopg); a new leader catches up the ticks
          nobody claimed;
  naive   the same app checking is_leader() before each run and writing with neither.

Each fault hits both arms' current leader at the same moment, at least twice each: the leader pod
deleted, force-deleted; its app container SIGKILLed, its sidecar container SIGKILLed; its app
frozen past its term (SIGSTOP, SIGCONT once another pod leads: its late writes must be refused);
its sidecar frozen likewise; the pod cut off from the apiserver (a DROP rule inside the node's
network namespace for the pod's packets to the apiserver's port: it still reaches PostgreSQL) and
reconnected; `kubectl rollout restart`; `kubectl delete lease`.

Executions are counted from the effect table (one row per execution, no uniqueness), read with
psql inside each arm's PostgreSQL pod. Asserted: the fenced arm never ran a tick twice and never
wrote after a newer term had written (token order); every fault was injected at least twice in
both arms; every tick the fenced arm never ran lies inside a stated bound after a fault. Reported
(`[node figures]`, printed at the end of the run): per arm, ticks due, duplicated, never run, run
late (caught up) and whether each lies inside its fault's bound, the longest gap, stale writes
refused (fenced) and accepted out of token order (naive).
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import local_node, localcluster
from tests.node.example import (  # noqa: F401 - fixtures
    beat_images,
    example_chart,
    example_release,
    image,
    new_release,
    pods_image,
    report,
)

Release = example_release.Release
SEED = int(os.environ.get("BEAT_CHAOS_SEED", "20261203"))
ROUNDS = 2  # each fault at least twice
REPLICAS = 2  # per arm: a leader and a standby to take over (two arms, PostgreSQL each: six pods)
JOBS = 4
INTERVAL_S = 1.0
WORK_S = 0.3  # BEAT_WORK_SECONDS: the window between a run's check of its term and its write
# The election, faster than the example's defaults so that eighteen faults fit in minutes.
LEASE_TTL_S = 8.0
RENEWAL_S = 2.0
CANDIDATE_HEARTBEAT_S = 1.0  # election.heartbeatInterval: how often a standby looks again
APP_TTL_S = 4.0  # app.heartbeatTTL: a leader whose app is silent this long hands over
SETS = [f"lease-sidecar.election.leaderLeaseTTL={LEASE_TTL_S:g}s",
        f"lease-sidecar.election.leaderRenewalInterval={RENEWAL_S:g}s",
        f"lease-sidecar.election.heartbeatInterval={CANDIDATE_HEARTBEAT_S:g}s",
        "lease-sidecar.election.heartbeatTTL=3s", f"lease-sidecar.app.heartbeatTTL={APP_TTL_S:g}s"]
# A new leader's first run catches up every tick nobody claimed, in parallel with the work each does.
CATCH_UP_S = 3.0
TWO_TICKS_S = 2 * INTERVAL_S + WORK_S
# The stated bound per fault: from its injection, every tick it delayed has run by then.
#   graceful (the app resigns on SIGTERM, the sidecar releases): a standby's next look at most,
#     but a lost release still expires: lease TTL;
#   crash of the holder or of its path to the apiserver (force delete, sidecar killed, frozen or
#     cut off): the Lease expires one TTL after the last renewal, before the fault; a standby
#     notices within one candidate heartbeat;
#   the app (killed, frozen): the sidecar hands over after one app TTL of silence (or the app is
#     back sooner and leads on); the release could be lost, so a lease TTL more.
GRACEFUL_BOUND_S = LEASE_TTL_S + TWO_TICKS_S + CATCH_UP_S
CRASH_BOUND_S = LEASE_TTL_S + CANDIDATE_HEARTBEAT_S + TWO_TICKS_S + CATCH_UP_S
APP_BOUND_S = APP_TTL_S + LEASE_TTL_S + CANDIDATE_HEARTBEAT_S + TWO_TICKS_S + CATCH_UP_S
BOUNDS_S = {
    "delete": GRACEFUL_BOUND_S,
    "force_delete": CRASH_BOUND_S,
    "app_sigkill": APP_BOUND_S,
    "sidecar_sigkill": CRASH_BOUND_S,
    "app_freeze": APP_BOUND_S,
    "sidecar_freeze": CRASH_BOUND_S,
    "cut_off": CRASH_BOUND_S,
    "rollout_restart": GRACEFUL_BOUND_S,
    # The leader says standby at once, but a candidate that saw the Lease deleted waits one lease
    # duration before creating it (nobody may assume a paused or cut-off holder saw it): a crash.
    "delete_lease": CRASH_BOUND_S,
}
FAULTS = tuple(BOUNDS_S)
MID_WORK_S = 0.15  # freeze this long before a tick's runs typically write: they are working
FROZEN_PAST_TAKEOVER_S = 3.0  # a frozen or cut-off leader is let go this long after another leads
TAKEOVER_TIMEOUT_S = 60.0
SETTLE_S = 2.0  # between faults, once both arms have one leader again
DRAIN_S = 8.0  # after the last fault: catch-ups land before the tables are read
INSTALL_TIMEOUT_S = 420.0  # two releases at once, six pods, on a busy 2-core machine


@dataclass
class Arm:
    mode: str
    release: Release
    watch: example_release.LeaseWatch
    faults: list[Injection] = field(default_factory=list)


@dataclass(frozen=True)
class Injection:
    fault: str
    leader: str
    injected_s: float  # wall clock (time.time()), comparable with PostgreSQL's clock_timestamp()
    recovered_s: float
    successor: str


# ---------------------------------------------------------------- the releases


@pytest.fixture(scope="module")
def arms(example_chart: Path, beat_images: dict[str, str]) -> Iterator[dict[str, Arm]]:  # noqa: F811
    releases = {}
    for mode in ("fenced", "naive"):
        release = new_release(example_chart, "native", name=mode)
        release.namespace = release.namespace.replace("pods-native-", f"beat-{mode}-")
        release.sets = [*SETS, f"replicaCount={REPLICAS}", *example_release.beat_sets(mode, jobs=JOBS, work_s=WORK_S)]
        releases[mode] = release
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(release.install, INSTALL_TIMEOUT_S) for release in releases.values()]:
                future.result()
        watches = {mode: example_release.LeaseWatch(r.api, r.namespace, r.lease) for mode, r in releases.items()}
        for lease_watch in watches.values():
            lease_watch.__enter__()
        try:
            yield {mode: Arm(mode, release, watches[mode]) for mode, release in releases.items()}
        finally:
            for lease_watch in watches.values():
                lease_watch.stop()
    except example_release.ReleaseError as error:
        pytest.fail(f"the example beat could not be installed: {error}", pytrace=False)
    finally:
        for release in releases.values():
            release.uninstall()


# ---------------------------------------------------------------- faults


def pod_object(release: Release, pod: str) -> dict[str, Any] | None:
    return release.api.request("GET", f"/api/v1/namespaces/{release.namespace}/pods/{pod}")


def container_id(release: Release, pod: str, container: str) -> str:
    found = pod_object(release, pod)
    assert found is not None, f"pod {pod} is gone"
    statuses = found["status"].get("containerStatuses", []) + found["status"].get("initContainerStatuses", [])
    status = next(s for s in statuses if s["name"] == container)
    return status["containerID"].removeprefix("containerd://")


def signal_container(release: Release, pod: str, container: str, signal_name: str) -> None:
    """Signals the container's first process through the node's containerd (as the other node
    tests do): ctr talks to its unix socket; no address of the node is dialled."""
    result = subprocess.run(["ctr", f"--address={image.default_containerd_address()}", "-n", "k8s.io", "tasks",
                             "kill", "--signal", signal_name, container_id(release, pod, container)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"ctr kill {signal_name} {pod}/{container}: {result.stderr}"


def apiserver_rule(release: Release, pod: str, action: str) -> None:
    """Inserts (-I) or deletes (-D) a DROP of the pod's packets to the apiserver's port, inside the
    node's network namespace only: the pod's other traffic (PostgreSQL) is untouched. Pods reach
    the apiserver at the node IP (kube-proxy DNATs the `kubernetes` Service to it), so the packets
    meet the namespace's INPUT chain."""
    found = pod_object(release, pod)
    assert found is not None and found["status"].get("podIP"), f"pod {pod} has no IP"
    rule = ["-s", found["status"]["podIP"], "-p", "tcp", "--dport", str(localcluster.APISERVER_PORT), "-j", "DROP"]
    argv = ["nsenter", f"--net={local_node.NETNS_PIN}", "--", "iptables", "-w", "5", action, "INPUT", *rule]
    if action == "-I":
        argv[argv.index("INPUT") + 1:argv.index("INPUT") + 1] = ["1"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"iptables {action} for {pod}: {result.stderr}"


def typical_write_offset_s(release: Release) -> float:
    """The median time from a tick to its effect's write, over the last 20 s (a busy machine
    starts runs late): when a tick's runs are mid-work."""
    median = example_release.beat_query(
        release, "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM executed_at - scheduled_at))"
                 " FROM beat_effects WHERE scheduled_at > now() - interval '20 seconds' AND NOT caught_up")
    return min(float(median or WORK_S), 3.0)


def wait_for_successor(arm: Arm, leader: str, since_s: float) -> str:
    change = arm.watch.wait_for(lambda c: c.holder not in ("", leader), TAKEOVER_TIMEOUT_S, since_s=since_s,
                                what=f"{arm.mode}: another holder than {leader}")
    return change.holder


def inject(arm: Arm, fault: str, barrier: threading.Barrier) -> Injection:
    release = arm.release
    leader = release.wait_for_one_leader(REPLICAS, timeout_s=180)
    write_offset_s = typical_write_offset_s(release) if fault == "app_freeze" else 0.0
    barrier.wait(timeout=240)  # both arms' leaders known: the fault hits both at the same moment
    if fault == "app_freeze":
        # Mid-work: a tick's runs write about write_offset_s after the tick, having worked WORK_S
        # before (fenced: inside the claim's transaction; naive: after the is_leader() check).
        # Freezing a little before that moment stops them between their check and their write.
        time.sleep(INTERVAL_S - time.time() % INTERVAL_S + max(0.05, write_offset_s - MID_WORK_S))
    injected_s, started = time.time(), time.monotonic()
    successor = ""
    if fault == "delete":
        release.api.delete_pod(release.namespace, leader)
    elif fault == "force_delete":
        release.api.delete_pod(release.namespace, leader, grace_period_s=0)
    elif fault == "app_sigkill":
        signal_container(release, leader, example_release.APP_CONTAINER, "SIGKILL")
    elif fault == "sidecar_sigkill":
        signal_container(release, leader, example_release.SIDECAR_CONTAINER, "SIGKILL")
    elif fault in ("app_freeze", "sidecar_freeze"):
        container = example_release.APP_CONTAINER if fault == "app_freeze" else example_release.SIDECAR_CONTAINER
        signal_container(release, leader, container, "SIGSTOP")
        try:
            successor = wait_for_successor(arm, leader, started)
            time.sleep(FROZEN_PAST_TAKEOVER_S)  # the new leader writes; then the frozen one resumes
        finally:
            signal_container(release, leader, container, "SIGCONT")
    elif fault == "cut_off":
        apiserver_rule(release, leader, "-I")
        try:
            successor = wait_for_successor(arm, leader, started)
            time.sleep(FROZEN_PAST_TAKEOVER_S)
        finally:
            apiserver_rule(release, leader, "-D")
    elif fault == "rollout_restart":
        example_release.kubectl("rollout", "restart", "-n", release.namespace, f"deployment/{release.deployment}")
        example_release.kubectl("rollout", "status", "-n", release.namespace, f"deployment/{release.deployment}",
                                "--timeout=240s", timeout_s=270)
    elif fault == "delete_lease":
        example_release.kubectl("delete", "lease", "-n", release.namespace, release.lease)
    else:
        raise AssertionError(f"unknown fault {fault}")
    now_leader = release.wait_for_one_leader(REPLICAS, timeout_s=240)
    injection = Injection(fault, leader, injected_s, time.time(), successor or now_leader)
    arm.faults.append(injection)
    return injection


def run_schedule(arms: dict[str, Arm], schedule: list[str]) -> None:
    for number, fault in enumerate(schedule, 1):
        barrier = threading.Barrier(len(arms))
        with ThreadPoolExecutor(max_workers=len(arms)) as pool:
            futures = {mode: pool.submit(inject, arm, fault, barrier) for mode, arm in arms.items()}
            done = {mode: future.result() for mode, future in futures.items()}
        took = ", ".join(f"{mode} {i.leader[-5:]}->{i.successor[-5:]} back in {i.recovered_s - i.injected_s:.1f}s"
                         for mode, i in done.items())
        print(f"[beat-chaos] {number}/{len(schedule)} {fault}: {took}", flush=True)
        time.sleep(SETTLE_S)


# ---------------------------------------------------------------- judging


def attribute(arm: Arm, tick_s: float) -> Injection | None:
    """The fault whose window holds this tick: from just before its injection (a run in flight
    when it hit is its too) until both arms had one leader again. A rollout's window spans all
    its hand-overs."""
    for injection in arm.faults:
        if injection.injected_s - INTERVAL_S - WORK_S <= tick_s <= injection.recovered_s:
            return injection
    return None


def judge(arm: Arm, figures: example_release.BeatFigures) -> dict[str, Any]:
    """Each tick never run, and each run late, with the fault whose window holds it and whether it
    lies inside that fault's bound (never run: the window; late: its wait at most the bound)."""
    never_run = []
    for job, tick in figures.never_run:
        fault = attribute(arm, tick)
        never_run.append({"job": job, "tick": tick, "fault": fault.fault if fault else None,
                          "inside_bound": fault is not None})
    late = []
    for job, tick, lateness_s in figures.late:
        fault = attribute(arm, tick)
        inside = fault is not None and lateness_s <= BOUNDS_S[fault.fault]
        late.append({"job": job, "tick": round(tick, 3), "late_s": lateness_s,
                     "fault": fault.fault if fault else None,
                     "after_injection_s": round(tick - fault.injected_s, 3) if fault else None,
                     "inside_bound": inside})
    return {"never_run": never_run, "late": late}


def per_fault(items: list[dict[str, Any]]) -> dict[str, str]:
    """{fault: "<inside>/<total>"} of the ticks it delayed or lost."""
    counts: dict[str, list[int]] = {}
    for item in items:
        inside_total = counts.setdefault(str(item["fault"]), [0, 0])
        inside_total[0] += bool(item["inside_bound"])
        inside_total[1] += 1
    return {fault: f"{inside}/{total}" for fault, (inside, total) in sorted(counts.items())}


def test_exactly_once_under_every_fault_fenced_and_naive(arms: dict[str, Arm],
                                                        report: Callable[..., None]) -> None:  # noqa: F811
    schedule = [fault for fault in FAULTS for _ in range(ROUNDS)]
    random.Random(SEED).shuffle(schedule)
    for arm in arms.values():
        arm.release.wait_for_one_leader(REPLICAS, timeout_s=180)
    time.sleep(5)  # both beats running: the window starts with every job on time
    start_s = time.time()
    started = time.monotonic()
    try:
        run_schedule(arms, schedule)
    except example_release.ReleaseError as error:
        pytest.fail(f"the fault schedule (seed {SEED}) could not go on: {error}", pytrace=False)
    time.sleep(DRAIN_S)
    end_s = time.time() - DRAIN_S / 2  # the last ticks' runs (and catch-ups) have landed
    jobs = [f"job-{index}" for index in range(1, JOBS + 1)]
    results = {}
    for mode, arm in arms.items():
        executions = example_release.beat_executions(arm.release, since_s=start_s - 60)
        figures = example_release.beat_figures(executions, jobs, start_s, end_s, INTERVAL_S)
        refusals = example_release.beat_refusals(arm.release, since_s=start_s)
        judged = judge(arm, figures)
        results[mode] = (figures, refusals, judged)
        injected = {fault: sum(1 for i in arm.faults if i.fault == fault) for fault in FAULTS}
        report(f"beat chaos ({mode})", seed=SEED, duration_s=round(time.monotonic() - started, 1),
               ticks=figures.ticks, executions=figures.executions,
               duplicated_ticks=len(figures.duplicated_ticks),
               max_executions_per_tick=figures.max_executions_per_tick,
               never_run=len(figures.never_run), never_run_inside_bound=per_fault(judged["never_run"]),
               late=len(figures.late), late_inside_bound=per_fault(judged["late"]),
               max_late_s=max([late for _, _, late in figures.late], default=0.0),
               late_outside_bound_sample=[item for item in judged["late"] if not item["inside_bound"]][:6],
               caught_up=len(figures.caught_up),
               longest_gap_s=figures.longest_gap_s, stale_writes_refused=refusals,
               out_of_order_writes=figures.out_of_order_writes, faults=injected,
               bounds_s={fault: round(bound, 1) for fault, bound in BOUNDS_S.items()})
    fenced, _fenced_refusals, fenced_judged = results["fenced"]
    for mode, arm in arms.items():
        missing = [fault for fault in FAULTS if sum(1 for i in arm.faults if i.fault == fault) < ROUNDS]
        assert not missing, f"{mode}: faults injected fewer than {ROUNDS} times: {missing}"
    assert fenced.executions > 0 and fenced.ticks > 0
    assert fenced.duplicated_ticks == [], f"fenced ticks run more than once: {fenced.duplicated_ticks[:20]}"
    assert fenced.out_of_order_writes == 0, "a fenced write landed after a newer term's"
    unexplained = [item for item in fenced_judged["never_run"] if not item["inside_bound"]]
    assert unexplained == [], f"fenced ticks never run and outside every fault's bound: {unexplained[:20]}"
