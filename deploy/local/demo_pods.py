#!/usr/bin/env python3
"""`make demo-pods`: the example chart in real pods on the local node running the example beat
(APScheduler jobs ticking every second, written through the tick ledger and the fence into a
PostgreSQL pod), its leader pod deleted, the hand-over timed, and the database asked afterwards
whether any tick ran twice and which ticks the new leader caught up.

    deploy/local/demo_pods.py            # DELETIONS=3 leader pods deleted, one leader's app frozen
    KEEP=1 deploy/local/demo_pods.py     # leave the release running to look around
    BEAT=0 deploy/local/demo_pods.py     # the database-free example (the app only logs its role)

Starts what is missing first: the control plane and the node (`deploy/local/cluster up --node`),
the images (the sidecar's from the Dockerfile, deploy/local/image.py; the beat's PostgreSQL and
app from Debian packages, deploy/local/example_images.py, built side by side) in the node's
containerd. Stdlib only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import example_images  # noqa: E402
import example_release  # noqa: E402
import image  # noqa: E402

NAMESPACE = os.environ.get("NAMESPACE", "lease-sidecar-demo-pods")
RELEASE = "demo"
REPLICAS = 3
DELETIONS = int(os.environ.get("DELETIONS", "3"))
KEEP = os.environ.get("KEEP") == "1"
BEAT = os.environ.get("BEAT", "1") != "0"
BEAT_JOBS = 3
TICKS_SHOWN = 6


def say(message: str) -> None:
    print(f"[demo-pods] {message}", flush=True)


def show_roles(release: example_release.Release) -> None:
    for view in release.views():
        print(f"    {view.pod:<48} role file: {view.file:<8} GET /leader: {view.http}")


def show_ticks(release: example_release.Release, pod: str) -> None:
    logs = example_release.kubectl("logs", "-n", release.namespace, pod, "-c", example_release.APP_CONTAINER,
                                   f"--tail={TICKS_SHOWN}", check=False, timeout_s=30).stdout
    for line in logs.splitlines():
        print(f"    {line}")


def show_database(release: example_release.Release, since_s: float) -> None:
    """What the effect table (one row per execution, nothing unique) says about every tick since
    the release started: none ran twice; the ones the new leaders ran late, caught up."""
    jobs = [f"job-{index}" for index in range(1, BEAT_JOBS + 1)]
    end_s = time.time() - 2  # the current tick's runs may still be working
    executions = example_release.beat_executions(release, since_s=since_s)
    first = min((e.scheduled_s for e in executions), default=since_s)
    figures = example_release.beat_figures(executions, jobs, first, end_s)
    refusals = example_release.beat_refusals(release, since_s=since_s)
    say(f"from PostgreSQL (beat_effects, one row per execution, nothing unique): {figures.ticks} ticks due, "
        f"{figures.executions} executions, most executions of one tick: {figures.max_executions_per_tick}, "
        f"ticks run twice: {len(figures.duplicated_ticks)}, never run: {len(figures.never_run)}")
    say(f"longest time without any execution: {figures.longest_gap_s:.1f}s; writes refused by the fence: "
        f"{sum(refusals.values())}; leaders in order: {', '.join(figures.leaders)}")
    say(f"ticks first run more than {example_release.LATE_AFTER_S:g}s late: {len(figures.late)}; caught up by a "
        f"new leader from the ledger (ticks nobody had claimed): {len(figures.caught_up)}")
    # One line per job and catching-up leader: the ticks' range and how late they ran.
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for job, tick, late_s, pod in figures.caught_up:
        groups.setdefault((job, pod), []).append((tick, late_s))
    for (job, pod), ticks in sorted(groups.items()):
        first_tick, last_tick = min(t for t, _ in ticks), max(t for t, _ in ticks)
        lates = [late for _, late in ticks]
        print(f"    {job}: {len(ticks)} tick(s) {clock(first_tick)}-{clock(last_tick)} caught up by {pod}, "
              f"{min(lates):.1f}-{max(lates):.1f}s late")


def clock(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch_s))


def signal_app(release: example_release.Release, pod: str, signal_name: str) -> None:
    """Signals the app container's process through the node's containerd (its unix socket)."""
    found = release.api.request("GET", f"/api/v1/namespaces/{release.namespace}/pods/{pod}") or {}
    status = next(s for s in found["status"]["containerStatuses"] if s["name"] == example_release.APP_CONTAINER)
    subprocess.run(["ctr", f"--address={image.default_containerd_address()}", "-n", "k8s.io", "tasks", "kill",
                    "--signal", signal_name, status["containerID"].removeprefix("containerd://")],
                   check=True, capture_output=True, timeout=30)


def freeze_leader_app(release: example_release.Release, watch: example_release.LeaseWatch) -> None:
    """The leader's app frozen (SIGSTOP) mid-work: its heartbeats stop, its sidecar hands over after
    the app TTL, the new leader catches up the ticks nobody ran; resumed (SIGCONT), the old app's
    late writes are refused."""
    leader = release.wait_for_one_leader(REPLICAS)
    frozen = time.monotonic()
    signal_app(release, leader, "SIGSTOP")
    try:
        taken = watch.wait_for(lambda c: c.holder not in ("", leader), 120, since_s=frozen,
                               what=f"a new holder after freezing {leader}'s app")
        say(f"kill -STOP {leader}'s app (mid-work, its transaction open) -> {taken.holder} leads after "
            f"{taken.at_s - frozen:.1f}s (the app's heartbeat TTL) and catches up the ticks nobody ran")
        time.sleep(3)
    finally:
        signal_app(release, leader, "SIGCONT")
    time.sleep(3)
    logs = example_release.kubectl("logs", "-n", release.namespace, leader, "-c", example_release.APP_CONTAINER,
                                   "--tail=200", check=False, timeout_s=30).stdout
    refused = [line for line in logs.splitlines() if line.startswith("REFUSED")]
    say(f"kill -CONT {leader}'s app: {len(refused)} late write(s) refused{':' if refused else ''}")
    for line in refused[:TICKS_SHOWN]:
        print(f"    {line}")


def main() -> int:
    started = time.monotonic()
    up = subprocess.run([str(HERE / "cluster"), "up", "--node"])
    if up.returncode != 0:
        return up.returncode
    try:
        if BEAT:
            example_images.start_builds()  # side by side with the sidecar's image
        address = image.default_containerd_address()
        ref = image.load(address)
        if BEAT:
            refs = example_images.load(address, wait=lambda: example_images.start_builds().result())
            ref = ", ".join([ref, *refs.values()])
    except image.ImageError as error:
        print(f"demo-pods: error: {error}", file=sys.stderr)
        return 1
    say(f"images in the node's containerd: {ref}")
    workdir = example_release.temporary_workdir()
    chart = example_release.packaged_example_chart(workdir)
    release = example_release.Release(example_release.Api(), NAMESPACE, RELEASE, chart,
                                      values=[chart / "ci" / "native-values.yaml"],
                                      sets=example_release.beat_sets("fenced", jobs=BEAT_JOBS) if BEAT else [])
    what = f"the example beat, {BEAT_JOBS} jobs every second, PostgreSQL" if BEAT else "the example"
    say(f"helm install {RELEASE} ({what}; native sidecar, {REPLICAS} replicas) in namespace {NAMESPACE}")
    installed_s = time.time()
    try:
        release.install()
        leader = release.wait_for_one_leader(REPLICAS)
        say(f"ready after {time.monotonic() - started:.0f}s; exactly one leader, {leader}, holds Lease "
            f"{NAMESPACE}/{release.lease}:")
        show_roles(release)
        if BEAT:
            time.sleep(3)
            say(f"the ticks, as {leader}'s app logs them:")
            show_ticks(release, leader)
        took = []
        with example_release.LeaseWatch(release.api, NAMESPACE, release.lease) as watch:
            for number in range(1, DELETIONS + 1):
                leader = release.wait_for_one_leader(REPLICAS)
                failover = example_release.delete_leader(release, watch, leader)
                released = ("not released" if failover.released_s is None
                            else f"released after {failover.released_s * 1000:.0f}ms")
                say(f"deletion {number}: kubectl delete pod {leader} -> {failover.successor} leads after "
                    f"{failover.new_leader_s * 1000:.0f}ms (lease {released})")
                took.append(failover.new_leader_s)
            if BEAT:
                freeze_leader_app(release, watch)
        leader = release.wait_for_one_leader(REPLICAS)
        say(f"back to {REPLICAS} pods, leader {leader}:")
        show_roles(release)
        if BEAT:
            time.sleep(3)
            show_ticks(release, leader)
            show_database(release, installed_s)
        print(f"\npod deletion failover (graceful, the app exits on SIGTERM): {example_release.summary(took)}")
    except (example_release.ReleaseError, OSError) as error:
        print(f"demo-pods: error: {error}", file=sys.stderr)
        return 1
    finally:
        if KEEP:
            say(f"kept: eval \"$(deploy/local/cluster env)\"; kubectl -n {NAMESPACE} get pods,lease")
        else:
            release.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
