"""Issue 17 item 10: a role-file write that fails never leaves `leader` behind, and --pod-ip
refuses an address the apiserver would refuse at every write."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.config import ConfigError
from sidecar.publish.role_files import RoleFiles
from sidecar.wiring.settings import build_parser, load_settings


def snapshot(leading: bool) -> dict[str, Any]:
    return {"role": "leader" if leading else "standby", "is_leader": leading, "fencing_token": 7 if leading else None,
            "valid_until": None, "valid_until_monotonic": 12.5 if leading else None,
            "valid_for_seconds": 2.0 if leading else None}


class DiskFull(RoleFiles):
    """The emptyDir the app shares is full: creating or writing a file fails with ENOSPC."""

    full = False

    def _replace(self, name: str, content: str) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._replace(name, content)


def test_a_failed_write_removes_the_role_file_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = DiskFull(tmp_path)
    files.prepare()
    files.publish(snapshot(leading=True))
    assert (tmp_path / "role").read_text() == "leader\n"
    files.full = True
    with caplog.at_level(logging.ERROR):
        files.publish(snapshot(leading=False))  # the step-down cannot be written...
    assert not (tmp_path / "role").exists()  # ...so `leader` is not left behind
    assert not (tmp_path / "status.json").exists()
    assert files.failing
    failures = [r for r in caplog.records if getattr(r, "event", "") == "role_file_failed"]
    assert len(failures) == 1 and failures[0].removed is True and "No space" in failures[0].error
    files.publish(snapshot(leading=False))  # reported once, not at every heartbeat
    assert len([r for r in caplog.records if getattr(r, "event", "") == "role_file_failed"]) == 1
    files.full = False
    files.publish(snapshot(leading=True))
    assert (tmp_path / "role").read_text() == "leader\n" and not files.failing


def test_a_failed_last_write_on_shutdown_removes_the_files(tmp_path: Path) -> None:
    files = DiskFull(tmp_path)
    files.prepare()
    files.publish(snapshot(leading=True))
    files.full = True
    with pytest.raises(OSError):
        files.stand_down(snapshot(leading=True))
    assert not (tmp_path / "role").exists()


def test_stand_down_clears_every_deadline(tmp_path: Path) -> None:
    files = RoleFiles(tmp_path)
    files.prepare()
    files.stand_down(snapshot(leading=True))
    import json

    status = json.loads((tmp_path / "status.json").read_text())
    assert status["valid_until_monotonic"] is None and status["valid_for_seconds"] is None
    assert (tmp_path / "role").read_text() == "standby\n"


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1", "0.0.0.0", "::", "169.254.1.1", "fe80::1",
                                     "224.0.0.1"])
def test_a_pod_ip_the_apiserver_refuses_is_refused_at_start(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings(build_parser().parse_args(["run", "--lease-name", "w", "--namespace", "n",
                                                 "--leader-service", "leader", "--pod-ip", address]))
    assert caught.value.field == "--pod-ip" and "loopback" in str(caught.value) and "\n" not in str(caught.value)


def test_a_routable_pod_ip_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    for address in ("10.244.0.5", "fd00::5", "192.168.1.9"):
        load_settings(build_parser().parse_args(["run", "--lease-name", "w", "--namespace", "n",
                                                 "--leader-service", "leader", "--pod-ip", address]))


def test_a_loopback_pod_ip_exits_2_with_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "sidecar", "run", "--lease-name", "w", "--namespace", "n",
                             "--leader-service", "leader", "--pod-ip", "127.0.0.1"],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--pod-ip" in lines[0] and "Traceback" not in result.stderr
