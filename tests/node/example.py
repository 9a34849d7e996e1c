"""Fixtures and probes for the example chart in real pods (imported by the node test modules).

The image and the chart are prepared through the same code as `make demo-pods`
(deploy/local/image.py, deploy/local/example_release.py)."""

from __future__ import annotations

import base64
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIGURE, ROOT, localcluster

sys.path.insert(0, str(ROOT / "deploy" / "local"))

import example_images
import example_release
import image

CI_VALUES = ROOT / "charts" / example_release.EXAMPLE_CHART / "ci"
REPLICAS = 3  # the example chart's replicaCount
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"

# Run in a container: who it runs as, what it may do, and whether a ServiceAccount token is mounted.
SECURITY_PROBE = f"""
import errno, json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
try:
    with open("/probe-write", "w"):
        pass
    root_write = "allowed"
    os.remove("/probe-write")
except OSError as error:
    root_write = errno.errorcode.get(error.errno, str(error.errno))
token = open("{TOKEN_PATH}").read() if os.path.exists("{TOKEN_PATH}") else None
print(json.dumps({{"uid": os.getuid(), "gid": os.getgid(), "cap_eff": status["CapEff"].strip(),
                  "no_new_privs": status["NoNewPrivs"].strip(), "root_write": root_write, "token": token}}))
"""


@pytest.fixture(scope="module")
def pods_image(node: Any) -> str:
    """The image built from the Dockerfile, imported into the node's containerd (cached: a warm
    run only imports). Returns the reference the charts run by default."""
    address = getattr(node, "containerd_socket", None) or image.default_containerd_address()
    # The example beat's images (test_beat_chaos.py) need no node: built meanwhile, in the background.
    example_images.start_builds()
    try:
        return image.load(str(address))
    except image.ImageError as error:
        pytest.fail(f"the image could not be built or loaded: {error}", pytrace=False)


@pytest.fixture(scope="module")
def beat_images(node: Any, pods_image: str) -> dict[str, str]:
    """The example beat's images (PostgreSQL, Redis, the app; example_images.py) in the node's
    containerd, besides the sidecar's. Their builds started with the first node test's image."""
    address = getattr(node, "containerd_socket", None) or image.default_containerd_address()
    try:
        return example_images.load(str(address), wait=lambda: example_images.start_builds().result())
    except image.ImageError as error:
        pytest.fail(f"the example beat's images could not be built or loaded: {error}", pytrace=False)


@pytest.fixture(scope="module")
def example_chart(tmp_path_factory: pytest.TempPathFactory, node: Any) -> Path:
    return example_release.packaged_example_chart(tmp_path_factory.mktemp("example-chart"))


def new_release(chart: Path, mode: str, name: str = "demo") -> example_release.Release:
    """A release of the example chart in its own namespace, with ci/<mode>-values.yaml."""
    namespace = f"pods-{mode}-{uuid.uuid4().hex[:6]}"
    return example_release.Release(example_release.Api(), namespace, name, chart,
                                   values=[CI_VALUES / f"{mode}-values.yaml"])


def installed(release: example_release.Release) -> Iterator[example_release.Release]:
    try:
        release.install()
    except example_release.ReleaseError as error:
        pytest.fail(f"helm install of the example in {release.namespace} failed: {error}", pytrace=False)
    try:
        yield release
    finally:
        release.uninstall()


def exec_json(release: example_release.Release, pod: str, container: str, script: str) -> dict[str, Any]:
    result = example_release.kubectl("exec", "-n", release.namespace, pod, "-c", container, "--", "python", "-c",
                                     script, check=False, timeout_s=30)
    assert result.returncode == 0, f"exec in {pod}/{container}: {result.stderr}"
    return json.loads(result.stdout)


def token_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def lease_writes(namespace: str, lease: str) -> list[dict[str, Any]]:
    """Successful writes of the Lease recorded in the API server's audit log."""
    return [event for event in example_release.iter_audit_events(localcluster.Paths().audit_log)
            if event.get("stage") == "ResponseComplete"
            and event.get("verb") in ("create", "update", "patch")
            and (event.get("objectRef") or {}).get("namespace") == namespace
            and (event.get("objectRef") or {}).get("name") == lease
            and (event.get("responseStatus") or {}).get("code", 500) < 300]


@pytest.fixture()
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Records measured figures as the test's `figure` properties (the session's summary prints
    them as `[node figures] {...}`, xdist workers included), and appends them as JSON lines to
    $NODE_FIGURES if set."""

    def write(name: str, **figures: object) -> None:
        line = json.dumps({"figure": name, **figures})
        request.node.user_properties.append((FIGURE, f"[node figures] {line}"))
        target = os.environ.get("NODE_FIGURES")
        if target:
            with open(target, "a") as out:
                out.write(line + "\n")

    return write
