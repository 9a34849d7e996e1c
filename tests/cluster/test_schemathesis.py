"""Schemathesis (every check, every phase it has for this API) against a real sidecar's own
/openapi.json: the description and the server must agree, positive and negative.

Reproduce by hand: start a sidecar (see tests/cluster/sidecars.py for the flags), then
  SCHEMATHESIS_HOOKS=tests.cluster.schemathesis_hooks .venv/bin/st \\
      --config-file tests/cluster/schemathesis.toml run \\
      http://127.0.0.1:PORT/openapi.json --checks all --exclude-path /leader/events
The configuration documents the one expected 5xx: /is-leader's 503 on a standby.
`GET /leader/events` is an endless Server-Sent Events stream by design (a client that reads the
whole body never returns); tests/cluster/test_local_api.py and test_fuzz_api.py cover it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cluster import sidecars
from tests.conftest import ROOT


def run_schemathesis(sidecar: sidecars.Sidecar, tmp_path: Path, config_file: str, *selection: str,
                     default_seed: str) -> None:
    """`st run` with every check against the sidecar's /openapi.json, limited by `selection`
    (st's path options), with config_file (beside this file) and the hooks of
    tests/cluster/schemathesis_hooks.py; SCHEMATHESIS_SEED and SCHEMATHESIS_MAX_EXAMPLES (60)
    override the run's seed and size. Fails unless st passed on selected operations and the
    sidecar is alive without a traceback."""
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [str(st), "--config-file", str(Path(__file__).with_name(config_file)), "run",
         f"{sidecar.url}/openapi.json", "--checks", "all", *selection,
         "--max-examples", os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "60"),
         "--seed", os.environ.get("SCHEMATHESIS_SEED", default_seed), "--request-timeout", "10", "--workers", "1",
         "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.cluster.schemathesis_hooks", "PYTHONPATH": str(ROOT)})
    output = result.stdout + result.stderr
    print(output[-3000:])
    assert result.returncode == 0, output[-8000:]
    assert "Operations:" in output and " 0 selected" not in output, output[-3000:]
    assert sidecar.alive() and "Traceback" not in sidecar.logs()


def test_local_api_passes_schemathesis(namespace: str, tmp_path: Path) -> None:
    sidecar = sidecars.start("schema", "schema", namespace, tmp_path, "--members", "--app-heartbeat-ttl", "3")
    try:
        # A live app and a leader, so every answer the description allows can occur.
        sidecars.wait_for(lambda: sidecar.post("/heartbeat")[1]["is_leader"], 15, interval=0.2)
        run_schemathesis(sidecar, tmp_path, "schemathesis.toml", "--exclude-path", "/leader/events",
                         default_seed="20261123")
    finally:
        sidecars.stop_all([sidecar])
