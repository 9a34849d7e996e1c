"""The lazy kubernetes_asyncio packages (sidecar/kube/lazy_modules.py): the sidecar's imports
load a few dozen of the client's modules instead of ~860, and every name the real packages bind
resolves to the very same object. Each check runs in a fresh interpreter, since the stand-ins
must be installed before anything imports kubernetes_asyncio."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fresh_python(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_sidecar_loads_few_client_modules_and_no_model() -> None:
    found = fresh_python("""
        import json, sys
        from sidecar.kube import lazy_modules
        installed = lazy_modules.install()
        import sidecar.wiring.app, sidecar.kube.lease_lock
        names = [m for m in sys.modules if m.startswith("kubernetes_asyncio")]
        print(json.dumps({"installed": installed, "count": len(names),
                          "models": [m for m in names if m.startswith("kubernetes_asyncio.client.models.")]}))
    """)
    assert found["installed"] is True
    assert found["models"] == []
    assert found["count"] < 100, found


def test_names_resolve_to_the_objects_the_real_packages_bind() -> None:
    # Resolve with the stand-ins, then run each real __init__ into a scratch namespace and compare.
    found = fresh_python("""
        import importlib.util, json, sys
        from sidecar.kube import lazy_modules
        lazy_modules.install()
        from kubernetes_asyncio.client import ApiClient, Configuration, CoordinationV1Api, V1Lease
        from kubernetes_asyncio.client.exceptions import ApiException
        from kubernetes_asyncio.client import rest
        import kubernetes_asyncio.client.models as models
        import kubernetes_asyncio
        def real(package):
            scratch = {}
            exec(open(importlib.util.find_spec(package).origin).read(), scratch)
            return scratch
        client, model_names = real("kubernetes_asyncio.client"), real("kubernetes_asyncio.client.models")
        same = {"ApiClient": ApiClient is client["ApiClient"],
                "Configuration": Configuration is client["Configuration"],
                "CoordinationV1Api": CoordinationV1Api is client["CoordinationV1Api"],
                "V1Lease": V1Lease is client["V1Lease"], "ApiException": ApiException is client["ApiException"],
                "models.V1LeaseSpec": models.V1LeaseSpec is model_names["V1LeaseSpec"]}
        print(json.dumps({"same": same, "rest": rest.__name__, "version": kubernetes_asyncio.__version__,
                          "config": kubernetes_asyncio.config.load_kube_config.__module__}))
    """)
    assert all(found["same"].values()), found["same"]
    assert found["rest"] == "kubernetes_asyncio.client.rest"
    assert found["version"] and found["config"] == "kubernetes_asyncio.config.kube_config"


def test_an_unlisted_name_runs_the_real_init_once() -> None:
    found = fresh_python("""
        import json
        from sidecar.kube import lazy_modules
        lazy_modules.install()
        import kubernetes_asyncio.client as client
        try:
            client.no_such_name
            missing = False
        except AttributeError:
            missing = True
        print(json.dumps({"missing": missing, "realized": hasattr(client, "V1Pod")}))
    """)
    assert found == {"missing": True, "realized": True}


def test_too_late_changes_nothing() -> None:
    found = fresh_python("""
        import json, sys
        import kubernetes_asyncio.client
        real = sys.modules["kubernetes_asyncio.client"]
        from sidecar.kube import lazy_modules
        installed = lazy_modules.install()
        print(json.dumps({"installed": installed, "same": sys.modules["kubernetes_asyncio.client"] is real}))
    """)
    assert found == {"installed": False, "same": True}
