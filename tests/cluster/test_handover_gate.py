"""Issue 17 item 10: `lease-sidecar handover` against an apiserver with the
CoordinatedLeaderElection feature gate on, which refuses `spec.preferredHolder` without
`spec.strategy` (422, losing the annotation sent with it). The command sends the annotation alone
unless the Lease already has a strategy, and never sets one itself.

A private control plane (own state directory, own ports, the gate on), started and stopped by
the same `deploy/local/cluster` script as the shared one, which stays ungated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import localcluster
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "local" / "cluster"
GATE_ARGS = "--feature-gates=CoordinatedLeaderElection=true --runtime-config=coordination.k8s.io/v1beta1=true"


@pytest.fixture(scope="module")
def gated_kubeconfig(cluster: localcluster.Paths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`cluster` first: the shared fixture has built the binaries this one reuses."""
    state = tmp_path_factory.mktemp("gated") / "state"
    env = {**os.environ, "LOCAL_CLUSTER_STATE": str(state), "LOCAL_CLUSTER_APISERVER_PORT": str(free_port()),
           "LOCAL_CLUSTER_ETCD_PORT": str(free_port(2)), "LOCAL_CLUSTER_APISERVER_ARGS": GATE_ARGS}
    up = subprocess.run([sys.executable, str(CLUSTER), "up"], capture_output=True, text=True, timeout=300, env=env)
    try:
        if up.returncode != 0:
            pytest.fail(f"private gated control plane could not start: {up.stderr.strip()[-1500:]}", pytrace=False)
        yield state / "admin.kubeconfig"
    finally:
        subprocess.run([sys.executable, str(CLUSTER), "down"], capture_output=True, text=True, timeout=120, env=env)


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(localcluster.TOOLS["kubectl"].cache_path()), "--kubeconfig", str(kubeconfig), *args],
                          capture_output=True, text=True, input=stdin, timeout=60)


def create_lease(kubeconfig: Path, name: str, **spec: Any) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "default"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 30, "acquireTime": now, "renewTime": now,
                     **spec}}
    created = kubectl(kubeconfig, "create", "-f", "-", stdin=json.dumps(body))
    assert created.returncode == 0, created.stderr


def lease(kubeconfig: Path, name: str) -> dict[str, Any]:
    got = kubectl(kubeconfig, "get", "lease", name, "-n", "default", "-o", "json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def handover(kubeconfig: Path, name: str, successor: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", "handover", "--lease", name, "--to", successor,
                           "-n", "default", "--kubeconfig", str(kubeconfig), "--timeout", "0"],
                          capture_output=True, text=True, timeout=60)


def test_the_gate_is_on(gated_kubeconfig: Path) -> None:
    """What the command must avoid: preferredHolder without a strategy is refused here."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "refused",
                                                                                 "namespace": "default"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 30, "renewTime": now,
                     "preferredHolder": "pod-b"}}
    refused = kubectl(gated_kubeconfig, "create", "-f", "-", stdin=json.dumps(body))
    assert refused.returncode != 0 and "strategy" in refused.stderr, refused


def test_without_a_strategy_the_annotation_is_sent_alone(gated_kubeconfig: Path) -> None:
    create_lease(gated_kubeconfig, "plain")
    result = handover(gated_kubeconfig, "plain", "pod-b")
    assert result.returncode == 0, result.stderr
    stored = lease(gated_kubeconfig, "plain")
    assert stored["metadata"]["annotations"]["lease-sidecar.io/handover-to"] == "pod-b"
    assert "preferredHolder" not in stored["spec"] and "strategy" not in stored["spec"]
    assert "no spec.strategy" in result.stdout


def test_with_a_strategy_the_preferred_holder_is_sent_too(gated_kubeconfig: Path) -> None:
    create_lease(gated_kubeconfig, "coordinated", strategy="OldestEmulationVersion")
    result = handover(gated_kubeconfig, "coordinated", "pod-b")
    assert result.returncode == 0, result.stderr
    stored = lease(gated_kubeconfig, "coordinated")
    assert stored["metadata"]["annotations"]["lease-sidecar.io/handover-to"] == "pod-b"
    assert stored["spec"]["preferredHolder"] == "pod-b"
    assert stored["spec"]["strategy"] == "OldestEmulationVersion"  # left as it was
    assert "strategy OldestEmulationVersion" in result.stdout
