"""SIGTERM at any moment of start-up exits 0 with `standby` in the role file (README's promise).

Python's default for SIGTERM is to die (exit 143); the sidecar catches it from the first line of
`main()`, before its heavy imports. Earlier than that the interpreter itself is still starting
(about 25 ms here) and nothing in the program can run yet.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.cluster import sidecars
from tests.conftest import localcluster

# From "still importing" to "electing": the imports and client set-up take most of a second.
DELAYS_S = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.5, 3.0)


@pytest.mark.parametrize("delay_s", DELAYS_S)
def test_sigterm_during_start_up_exits_0_with_standby(delay_s: float, namespace: str, tmp_path: Path,
                                                      cluster: localcluster.Paths) -> None:
    sidecar = sidecars.start("early", "early", namespace, tmp_path, wait_ready=False)
    try:
        time.sleep(delay_s)
        sidecar.process.send_signal(signal.SIGTERM)
        code = sidecar.process.wait(20)
    finally:
        sidecars.stop_all([sidecar])
    assert code == 0, f"exit {code} after SIGTERM at {delay_s}s: {sidecar.logs()[-1500:]}"
    assert (sidecar.role_dir / "role").read_text() == "standby\n"
    assert "Traceback" not in sidecar.logs()
