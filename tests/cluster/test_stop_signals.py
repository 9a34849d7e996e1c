"""SIGTERM at any moment of start-up exits 0 with `standby` in the role file (README's promise).

Python's default for SIGTERM is to die (exit 143); the sidecar catches it from the first line of
`main()`, before its heavy imports. Before that line the interpreter itself is still starting
(tens of milliseconds, more on a loaded machine) and no program can catch anything, so the delays
count from the moment the kernel shows the handler installed (SigCgt in /proc/<pid>/status); how
long that took after spawn is printed.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.cluster import sidecars
from tests.conftest import localcluster

# From "still importing" to "electing": the imports and client set-up take most of a second.
DELAYS_S = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.5, 3.0)


def catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.parametrize("delay_s", DELAYS_S)
def test_sigterm_during_start_up_exits_0_with_standby(delay_s: float, namespace: str, tmp_path: Path,
                                                      cluster: localcluster.Paths) -> None:
    spawned = time.monotonic()
    sidecar = sidecars.start("early", "early", namespace, tmp_path, wait_ready=False)
    try:
        caught_after_s = sidecars.wait_for(lambda: catches_sigterm(sidecar.process.pid), 10, interval=0.001)
        time.sleep(delay_s)
        signalled_after_s = time.monotonic() - spawned
        sidecar.process.send_signal(signal.SIGTERM)
        code = sidecar.process.wait(20)
    finally:
        sidecars.stop_all([sidecar])
    assert code == 0, f"exit {code} after SIGTERM at {signalled_after_s:.3f}s: {sidecar.logs()[-1500:]}"
    assert (sidecar.role_dir / "role").read_text() == "standby\n"
    assert "Traceback" not in sidecar.logs()
    print(f"SIGTERM caught from {caught_after_s * 1000:.0f}ms after spawn; sent at {signalled_after_s:.3f}s: exit 0")
