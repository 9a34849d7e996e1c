"""Session fixtures. The control plane is started once, through the same code as
`deploy/local/cluster up`; if it cannot start, every test that needs it fails (never skips)."""

from __future__ import annotations

import os
import subprocess
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
import node as local_node  # noqa: E402, F401  (deploy/local/node.py, for tests/node; `node` is a fixture)

TESTS = Path(__file__).resolve().parent
# A test needs the control plane if it lives under tests/cluster or tests/node or uses one of these
# fixtures; it is marked so that `pytest -m "not cluster"` really keeps it off (a node test is
# marked both `node` and `cluster`: the node runs beside the control plane).
MARK_BY_FOLDER = {"cluster": ("cluster",), "node": ("node", "cluster")}
MARK_BY_FIXTURE = {"cluster": ("cluster",), "kubeconfig": ("cluster",), "namespace": ("cluster",),
                   "node": ("node", "cluster")}


def pytest_itemcollected(item: pytest.Item) -> None:
    """Marks each test as it is collected, before `-m` deselects."""
    path = Path(item.path).resolve()
    folder = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else ""
    wanted = set(MARK_BY_FOLDER.get(folder, ()))
    for fixture in getattr(item, "fixturenames", ()):
        wanted.update(MARK_BY_FIXTURE.get(fixture, ()))
    present = {mark.name for mark in item.iter_markers()}
    for name in sorted(wanted - present):
        item.add_marker(name)


NODE_TESTS = "tests/node/"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under pytest-xdist, each test is a unit of work of its own, except the node's: they run in
    one worker, in file order (they share the example releases, one takes the node down and up),
    and, being the largest unit, are handed out first, since they take longest. (xdist's
    `loadgroup` does not work with pytest 9, whose node ids it can no longer rename.)"""
    from xdist.scheduler import LoadScopeScheduling

    class NodeTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return NODE_TESTS if nodeid.startswith(NODE_TESTS) else nodeid

    return NodeTestsTogether(config, log)


FIGURE = "figure"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Measured figures (`report` fixtures record them as the test's `figure` properties) are
    printed at the end, also when the tests ran in pytest-xdist workers whose output is not shown."""
    lines = [value for kind in ("passed", "failed", "error")
             for test in terminalreporter.stats.get(kind, [])
             if getattr(test, "when", "call") == "call"
             for name, value in getattr(test, "user_properties", ()) if name == FIGURE]
    if lines:
        terminalreporter.section("measured figures")
        for line in lines:
            terminalreporter.write_line(str(line))


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
    """A fresh namespace per test (names are unique; deletion is not waited for).

    Its `default` ServiceAccount is created here rather than waited for: the controller-manager
    creates it a moment after the namespace, and the ServiceAccount admission plugin refuses a pod
    created in that moment ("serviceaccount default not found"), which failed a CI run."""
    from tests.cluster.kube import kubectl

    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    created = kubectl("create", "serviceaccount", "default", "-n", name, check=False)
    if "created" not in created:  # the controller-manager won the race: it must be there now
        kubectl("get", "serviceaccount", "default", "-n", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A real PostgreSQL of this pytest process (tests/servers.py), superuser `postgres`, database
    `postgres`, on 127.0.0.1; stopped at the session's end. Fails, never skips, if it cannot start."""
    from tests import servers

    try:
        server = servers.start_postgres()
    except (servers.ServerError, OSError, subprocess.SubprocessError) as error:
        pytest.fail(f"PostgreSQL could not start: {error}", pytrace=False)
    yield server.dsn
    server.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis of this pytest process (tests/servers.py), no persistence; stopped at the end."""
    from tests import servers

    try:
        server = servers.start_redis()
    except (servers.ServerError, OSError, subprocess.SubprocessError) as error:
        pytest.fail(f"Redis could not start: {error}", pytrace=False)
    yield server.url
    server.stop()
