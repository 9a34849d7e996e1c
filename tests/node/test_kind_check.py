"""deploy/kind/check.sh's scenario, run as is against the local node instead of kind: the
example chart installed with Helm, exactly one leader in the role files and the Lease, the
leader pod deleted and the hand-over timed. CONTEXT names the node's cluster, and SKIP_IMAGE
says the image is already there (deploy/local/image.py loaded it): no Docker, no kind."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, localcluster
from tests.node.example import example_release, pods_image, report  # noqa: F401 - fixtures

CHECK = ROOT / "deploy" / "kind" / "check.sh"
TIMEOUT_S = 180


def test_kind_check_scenario_passes_on_the_local_node(node: Any, pods_image: str,  # noqa: F811
                                                      report: Callable[..., None]) -> None:  # noqa: F811
    kubeconfig = Path(getattr(node, "kubeconfig", localcluster.Paths().kubeconfig))
    context = json.loads(kubeconfig.read_text())["current-context"]
    namespace = f"kind-check-{uuid.uuid4().hex[:6]}"
    env = {**example_release.tool_env(), "KUBECONFIG": str(kubeconfig), "CONTEXT": context, "SKIP_IMAGE": "1",
           "IMAGE": pods_image.removeprefix("docker.io/library/"), "NAMESPACE": namespace, "RELEASE": "demo",
           "TIMEOUT": str(TIMEOUT_S)}
    try:
        result = subprocess.run(["bash", str(CHECK)], capture_output=True, text=True, env=env,
                                timeout=4 * TIMEOUT_S)
    finally:
        example_release.run_tool("helm", "uninstall", "demo", "--namespace", namespace, "--wait", "--timeout",
                                 "60s", check=False, timeout_s=90)
        example_release.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "using the existing cluster of context" in result.stderr
    assert "exactly one leader:" in result.stderr
    failover = re.search(r"failover: (\S+) -> (\S+) in ([0-9.]+)s", result.stderr)
    assert failover, result.stderr[-2000:]
    assert failover.group(1) != failover.group(2)
    report("kind check.sh on the local node", failover_s=float(failover.group(3)))
