"""Small helpers for cluster tests: kubectl with the admin kubeconfig, API clients."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.conftest import localcluster


def json_objects(lines: Iterable[str]) -> Iterator[Any]:
    """The JSON objects of a stream that prints them one after another over many lines, as
    `kubectl get --watch -o json` does, each as soon as it is complete."""
    decoder, buffer = json.JSONDecoder(), ""
    for line in lines:
        buffer += line
        while buffer.strip():
            try:
                obj, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                break
            buffer = buffer.lstrip()[end:]
            yield obj


def kubectl(*args: str, check: bool = True, token: str | None = None, stdin: str | None = None) -> str:
    binary = str(localcluster.TOOLS["kubectl"].cache_path())
    env = dict(os.environ, KUBECONFIG=str(localcluster.Paths().kubeconfig))
    argv = [binary, *args]
    if token is not None:
        paths = localcluster.Paths()
        argv = [binary, f"--server=https://127.0.0.1:{localcluster.APISERVER_PORT}",
                f"--certificate-authority={paths.pki / 'ca.crt'}", f"--token={token}",
                "--kubeconfig=/dev/null", *args]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, input=stdin, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout if check else result.stdout + result.stderr


def get_lease(namespace: str, name: str) -> dict[str, Any] | None:
    out = kubectl("get", "lease", name, "-n", namespace, "-o", "json", check=False)
    try:
        return json.loads(out)
    except ValueError:
        return None


def ca_path() -> Path:
    return localcluster.Paths().pki / "ca.crt"


def service_account_dir(parent: Path, token: str, namespace: str) -> Path:
    """What the kubelet mounts for a ServiceAccount (token, ca.crt, namespace), for a sidecar run as
    if in a pod (`LEASE_SIDECAR_IN_CLUSTER_DIR`)."""
    mounted = parent / "serviceaccount"
    mounted.mkdir()
    (mounted / "token").write_text(token)
    shutil.copy(ca_path(), mounted / "ca.crt")
    (mounted / "namespace").write_text(namespace)
    return mounted


def server_url() -> str:
    return f"https://127.0.0.1:{localcluster.APISERVER_PORT}"
