"""Fixtures of the control-plane tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.blackhole import BlackHoleProxy
from tests.conftest import localcluster


@pytest.fixture()
def api_path(cluster: localcluster.Paths, tmp_path: Path) -> Iterator[BlackHoleProxy]:
    """This test's own path to the apiserver: sidecars started with `api_path.kubeconfig_path`
    lose the API together on `cut()` (connections hang, as when the apiserver is frozen) while
    every other test, running in parallel, keeps it. Pausing the apiserver itself would cut them all."""
    proxy = BlackHoleProxy()
    proxy.start()
    proxy.kubeconfig(cluster.kubeconfig, tmp_path / "through-proxy.kubeconfig")
    try:
        yield proxy
    finally:
        proxy.close()
