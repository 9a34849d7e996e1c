"""The node itself: its addresses never appear in the machine's network namespace, pods reach
the apiserver at the `kubernetes` Service, and `down --node` leaves nothing behind (then the
node comes back for the rest of the session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT, local_node, localcluster
from tests.node.example import report  # noqa: F401 - fixture
from tests.ports import free_port

CLUSTER = ROOT / "deploy" / "local" / "cluster"


def cluster_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CLUSTER), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_node_addresses_live_only_in_its_namespace(node: local_node.Node) -> None:
    assert local_node.host_addresses() == []
    # ... while they do exist inside: the node IP on its veth, the pods' bridge once a pod ran.
    inside = subprocess.run(["nsenter", f"--net={local_node.NETNS_PIN}", "ip", "-o", "-4", "addr"],
                            capture_output=True, text=True, check=True).stdout
    assert f"inet {node.ip}/" in inside
    # Of all that the node leaves on the machine while it runs, only its namespace pins and the
    # pods' cgroups may show; no bridge, iptables chain, route, mount of kubelet's or host path.
    running = [item for item in local_node.leftovers()
               if not item.startswith(("path: /run/lease-sidecar-node", "cgroups: ", "mounts: "))]
    assert running == []
    mounts = [line for line in open("/proc/self/mounts").read().splitlines()
              if "kubelet" in line or "containerd" in line or "/run/netns" in line]
    assert mounts == []


def test_node_object_is_ready_at_the_node_ip(node: local_node.Node) -> None:
    found = json.loads(node.kubectl("get", "node", node.name, "-o", "json").stdout)
    addresses = {a["type"]: a["address"] for a in found["status"]["addresses"]}
    assert addresses["InternalIP"] == node.ip
    endpoints = json.loads(node.kubectl("get", "endpointslices", "-n", "default", "-l",
                                        "kubernetes.io/service-name=kubernetes", "-o", "json").stdout)
    assert [ep["addresses"] for ep in endpoints["items"][0]["endpoints"]] == [[node.ip]]


def test_down_node_leaves_nothing_behind_and_up_comes_back(node: local_node.Node,
                                                           report: Callable[..., None]) -> None:  # noqa: F811
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    node.kubectl("create", "namespace", namespace)
    try:
        # A pod makes the node create what it must clean up: bridge, veth, cgroups, mounts, pod logs.
        node.kubectl("run", "-n", namespace, "pause", f"--image={local_node.PAUSE_IMAGE}",
                     "--image-pull-policy=Never", "--restart=Never")
        node.kubectl("wait", "-n", namespace, "pod/pause", "--for=condition=Ready", "--timeout=90s")
        down = cluster_cli("down", "--node")
        assert down.returncode == 0, down.stderr
        assert local_node.leftovers() == []
        assert localcluster.is_ready(node.paths)  # the control plane keeps running
        started = time.monotonic()
        up = cluster_cli("up", "--node")
        warm_up_s = time.monotonic() - started
        assert up.returncode == 0, up.stderr
        assert local_node.is_node_ready(node.paths)
        report("warm up --node", seconds=round(warm_up_s, 2))
    finally:
        node.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_one_node_per_machine(node: local_node.Node, tmp_path: Path) -> None:
    """A second state directory gets its own control plane, but not a second node beside ours."""
    other = {"LOCAL_CLUSTER_STATE": str(tmp_path / "other"), "LOCAL_CLUSTER_APISERVER_PORT": str(free_port()),
             "LOCAL_CLUSTER_ETCD_PORT": str(free_port(2))}
    try:
        refused = cluster_cli("up", "--node", env=other)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines()[-1].startswith(
            f"cluster: error: a node from {node.paths.root} runs on this machine (one per machine)")
    finally:
        down = cluster_cli("down", env=other)
    assert down.returncode == 0, down.stderr
    assert local_node.is_node_ready(node.paths) and local_node.node_running(node.paths)  # ours untouched
