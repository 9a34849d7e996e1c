"""The lock files in requirements/ cover pyproject.toml: every requirement is pinned by a version
that satisfies it, and every pin carries hashes (pip and uv then refuse anything else). A
dependency added to pyproject.toml without `make lock` fails here, not on a fresh machine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def pins(name: str) -> dict[str, list[Version]]:
    """{canonical name: pinned versions} of one lock file; a pin without a hash fails the test."""
    text = (LOCKS / name).read_text()
    result: dict[str, list[Version]] = {}
    # An entry is a pin line and its indented continuation lines (hashes, then `# via` comments).
    for entry in re.split(r"\n(?=\S)", text):
        match = PIN.match(entry)
        if match is None:
            continue
        assert "--hash=sha256:" in entry, f"{name}: {match.group(0)} has no hash"
        result.setdefault(canonicalize_name(match.group(1)), []).append(Version(match.group(2)))
    return result


def requirements(*extras: str) -> list[Requirement]:
    found = [Requirement(text) for text in PROJECT["project"]["dependencies"]]
    found += [Requirement(text) for text in PROJECT["build-system"]["requires"]]
    for extra in extras:
        found += [Requirement(text) for text in PROJECT["project"]["optional-dependencies"][extra]]
    return found


@pytest.mark.parametrize(("lock", "extras"), [
    ("runtime.lock", ()),
    ("dev.lock", tuple(PROJECT["project"]["optional-dependencies"])),
])
def test_lock_pins_every_requirement_of_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    pinned = pins(lock)
    for requirement in requirements(*extras):
        versions = pinned.get(canonicalize_name(requirement.name))
        assert versions, f"{requirement} is not in requirements/{lock}: run `make lock`"
        assert any(requirement.specifier.contains(v, prereleases=True) for v in versions), (
            f"requirements/{lock} pins {requirement.name} at {versions}, outside {requirement.specifier}: "
            "run `make lock`")


def test_runtime_lock_agrees_with_the_dev_lock() -> None:
    """The image and the tests run the same versions of what they share."""
    runtime, dev = pins("runtime.lock"), pins("dev.lock")
    for name, versions in runtime.items():
        assert sorted(dev.get(name, [])) == sorted(versions), f"{name}: runtime {versions}, dev {dev.get(name)}"


def test_the_installer_is_pinned_too() -> None:
    assert list(pins("uv.lock")) == ["uv"]


def test_every_install_reads_a_lock_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements/uv.lock" in makefile
    assert "--require-hashes -r requirements/dev.lock" in makefile
    assert "-m pip install -q -e" not in makefile, "an install that resolves by itself picks the newest of the day"
    dockerfile = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    assert "--require-hashes -r requirements/runtime.lock" in dockerfile
    assert re.search(r"pip install [^&\n]*--no-deps [^&\n]*\.", dockerfile), "the package itself adds no dependency"


def test_the_declared_pythons_are_the_tested_ones() -> None:
    """requires-python's floor is the default interpreter's line (the whole suite, CI) and every other
    classifier version is in OTHER_PYTHONS (unit tests and elections on each, `make test-pythons`)."""
    declared = {c.rsplit(" :: ", 1)[1] for c in PROJECT["project"]["classifiers"]
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    floor = re.fullmatch(r">=(3\.\d+)", PROJECT["project"]["requires-python"])
    assert floor, PROJECT["project"]["requires-python"]
    others = re.search(r"^OTHER_PYTHONS \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert others, "Makefile: OTHER_PYTHONS"
    assert declared == {floor.group(1), *others.group(1).split()}, declared
