"""sidecar/client.py re-exports lease_sidecar_client (distribution lease-sidecar-client, which the
lease-sidecar distribution does not depend on). With it installed every old name is the client's
own object; without it the import fails with an ImportError that names what to install; an error
inside an installed client is not disguised as a missing one. Each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Makes `lease_sidecar_client` unimportable, as in an environment without the distribution.
WITHOUT_CLIENT = """
    import importlib.abc, sys
    class NoClient(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "lease_sidecar_client" or name.startswith("lease_sidecar_client."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, NoClient())
"""


def fresh_python(code: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None if pythonpath is None else {**os.environ, "PYTHONPATH": f"{pythonpath}:{ROOT}"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


def test_every_name_is_the_client_librarys_own_object() -> None:
    done = fresh_python("""
        import json
        import lease_sidecar_client, lease_sidecar_client.aio
        from sidecar import client
        print(json.dumps({name: getattr(client, name) is getattr(lease_sidecar_client, name,
                                                                   getattr(lease_sidecar_client.aio, name, None))
                          for name in client.__all__ if name not in ("LONG_POLL_S", "RETRY_S")}))
    """)
    assert done.returncode == 0, done.stderr
    same = json.loads(done.stdout.strip().splitlines()[-1])
    assert same and all(same.values()), same


def test_without_the_client_distribution_the_import_says_what_to_install() -> None:
    done = fresh_python(WITHOUT_CLIENT + """
    try:
        from sidecar import client
    except ImportError as error:
        print(type(error).__name__, "|", error, "|", type(error.__cause__).__name__)
    else:
        print("imported")
    """)
    assert done.returncode == 0, done.stderr
    kind, message, cause = done.stdout.strip().split(" | ")
    assert kind == "ImportError"
    assert "pip install lease-sidecar-client" in message and "pip install ./client" in message, message
    assert cause == "ModuleNotFoundError"


def test_the_sidecar_itself_never_needs_the_client() -> None:
    done = fresh_python(WITHOUT_CLIENT + """
    import sidecar.wiring.cli, sidecar.wiring.app
    print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_an_error_inside_an_installed_client_is_not_reported_as_a_missing_client(tmp_path: Path) -> None:
    package = tmp_path / "lease_sidecar_client"
    package.mkdir()
    (package / "__init__.py").write_text("import a_dependency_that_is_missing\n")
    done = fresh_python("""
    try:
        from sidecar import client
    except ImportError as error:
        print(type(error).__name__, "|", error.name)
    """, pythonpath=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ModuleNotFoundError | a_dependency_that_is_missing"
