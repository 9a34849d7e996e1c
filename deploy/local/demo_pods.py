#!/usr/bin/env python3
"""`make demo-pods`: the example chart in real pods on the local node, its leader pod deleted,
the hand-over timed.

    deploy/local/demo_pods.py            # DELETIONS=3 leader pods deleted, then uninstalled
    KEEP=1 deploy/local/demo_pods.py     # leave the release running to look around

Starts what is missing first: the control plane and the node (`deploy/local/cluster up --node`),
the image (built from the Dockerfile, deploy/local/image.py) in the node's containerd. Stdlib only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import example_release  # noqa: E402
import image  # noqa: E402

NAMESPACE = os.environ.get("NAMESPACE", "lease-sidecar-demo-pods")
RELEASE = "demo"
REPLICAS = 3
DELETIONS = int(os.environ.get("DELETIONS", "3"))
KEEP = os.environ.get("KEEP") == "1"


def say(message: str) -> None:
    print(f"[demo-pods] {message}", flush=True)


def show_roles(release: example_release.Release) -> None:
    for view in release.views():
        print(f"    {view.pod:<48} role file: {view.file:<8} GET /leader: {view.http}")


def main() -> int:
    started = time.monotonic()
    up = subprocess.run([str(HERE / "cluster"), "up", "--node"])
    if up.returncode != 0:
        return up.returncode
    try:
        ref = image.load(image.default_containerd_address())
    except image.ImageError as error:
        print(f"demo-pods: error: {error}", file=sys.stderr)
        return 1
    say(f"image {ref} is in the node's containerd")
    workdir = example_release.temporary_workdir()
    chart = example_release.packaged_example_chart(workdir)
    release = example_release.Release(example_release.Api(), NAMESPACE, RELEASE, chart,
                                      values=[chart / "ci" / "native-values.yaml"])
    say(f"helm install {RELEASE} (native sidecar, {REPLICAS} replicas) in namespace {NAMESPACE}")
    try:
        release.install()
        leader = release.wait_for_one_leader(REPLICAS)
        say(f"ready after {time.monotonic() - started:.0f}s; exactly one leader, {leader}, holds Lease "
            f"{NAMESPACE}/{release.lease}:")
        show_roles(release)
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
        leader = release.wait_for_one_leader(REPLICAS)
        say(f"back to {REPLICAS} pods, leader {leader}:")
        show_roles(release)
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
