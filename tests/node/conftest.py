"""The `node` fixture: the control plane and a real node (kubelet, containerd, kube-proxy,
controller-manager, scheduler), started once per session through the same code as
`deploy/local/cluster up --node`. If the node cannot start, every test that needs it fails
(never skips): a machine that cannot run the node tests is a finding, not a pass."""

from __future__ import annotations

import os

import pytest

from tests.conftest import local_node, localcluster


@pytest.fixture(scope="session")
def node() -> local_node.Node:
    """The Ready node. `node.kubectl(...)` / `node.helm(...)` run the cluster's tools against it,
    `node.import_image(tarball)` loads an image into its containerd, `node.env()` is the
    environment for anything else. The node stays up after the session (a warm next run)."""
    try:
        ready = local_node.node_up()
    except localcluster.ClusterError as error:
        pytest.fail(f"the local node could not start: {error}", pytrace=False)
    os.environ["KUBECONFIG"] = str(ready.kubeconfig)
    return ready


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_node_lifecycle.py stops and restarts the node, which empties its containerd (the images
    other modules imported): it runs after every other test of the session."""
    restarts = [item for item in items if item.path.name == "test_node_lifecycle.py"]
    items[:] = [item for item in items if item.path.name != "test_node_lifecycle.py"] + restarts
