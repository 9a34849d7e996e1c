"""Session fixtures. The control plane is started once, through the same code as
`deploy/local/cluster up`; if it cannot start, every test that needs it fails (never skips)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests check behaviour, not speed: on a loaded 2-core machine one example can take far
# longer than hypothesis's default 200 ms deadline, which then fails a correct test.
settings.register_profile("lease-sidecar", deadline=None)
settings.load_profile("lease-sidecar")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import localcluster  # noqa: E402


@pytest.fixture(scope="session")
def cluster() -> localcluster.Paths:
    try:
        paths = localcluster.up()
    except localcluster.ClusterError as error:
        pytest.fail(f"local control plane could not start: {error}", pytrace=False)
    os.environ["KUBECONFIG"] = str(paths.kubeconfig)
    return paths


@pytest.fixture(scope="session")
def kubeconfig(cluster: localcluster.Paths) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def tool_bin() -> dict[str, Path]:
    """Paths of kubectl and helm built for the control plane's version."""
    return {name: localcluster.TOOLS[name].cache_path() for name in ("kubectl", "helm")}


@pytest.fixture()
def namespace(kubeconfig: Path, tool_bin: dict[str, Path]) -> Iterator[str]:
    """A fresh namespace per test (no controller-manager here, so it is never finalized; names are unique)."""
    from tests.cluster.kube import kubectl

    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)
