"""Issue 11's flags: every wrong value is one line naming the flag, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sidecar.core.config import ConfigError
from sidecar.wiring.settings import build_parser, load_settings

BASE = ["run", "--lease-name", "work", "--namespace", "ns"]


def settings(*args: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> object:
    for name in ("POD_IP", "POD_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(build_parser().parse_args([*BASE, *args]))[0]


@pytest.mark.parametrize(("args", "env", "flag", "words"), [
    (["--leader-service", "Bad_Name"], {}, "--leader-service", "must be a Service name"),
    (["--leader-service", "x" * 64], {}, "--leader-service", "at most 63"),
    (["--leader-service", "1abc"], {}, "--leader-service", "starting with a letter"),
    (["--leader-service", "leader"], {}, "--pod-ip", "required with --leader-service"),
    (["--leader-service", "leader", "--pod-ip", "10.0.0.300"], {}, "--pod-ip", "must be an IP address"),
    (["--leader-service", "leader"], {"POD_IP": "pod-ip"}, "--pod-ip", "must be an IP address"),
    (["--pod-ip", "10.0.0.1"], {}, "--pod-ip", "only used with --leader-service"),
    (["--label-pod"], {}, "--label-pod", "needs POD_NAME"),
    (["--events=maybe"], {}, "--events", "boolean"),
    (["--label-pod=sometimes"], {"POD_NAME": "p"}, "--label-pod", "boolean"),
])
def test_bad_values_name_the_flag(args: list[str], env: dict[str, str], flag: str, words: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(*args, monkeypatch=monkeypatch, **env)
    assert caught.value.field == flag and words in str(caught.value) and "\n" not in str(caught.value)


def test_good_values(monkeypatch: pytest.MonkeyPatch) -> None:
    got = settings("--leader-service", "leader", "--events", "--label-pod", monkeypatch=monkeypatch,
                   POD_IP="fd00::5", POD_NAME="web-1")
    assert (got.leader_service, got.resolved_pod_ip(), got.events, got.label_pod) == ("leader", "fd00::5", True, True)
    off = settings("--events=false", monkeypatch=monkeypatch)
    assert (off.leader_service, off.events, off.label_pod) == ("", False, False)


@pytest.mark.parametrize("argv", [
    ["run", "--lease-name", "w", "--namespace", "n", "--leader-service", "leader"],
    ["handover", "--lease", "w", "--to", "a b"],
    ["handover", "--lease", "w", "--to", "b", "--timeout", "soon"],
    ["handover", "--lease", "w"],
])
def test_the_process_exits_2_with_one_line(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "sidecar", *argv], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
