"""The distribution itself: the core imports the standard library alone; the SQL ships as data."""

from __future__ import annotations

import os
import subprocess
import sys
import unittest

import lease_sidecar_client

CORE = ("lease_sidecar_client", "lease_sidecar_client.aio", "lease_sidecar_client.ticks")


class Distribution(unittest.TestCase):
    def test_the_core_imports_nothing_outside_the_standard_library(self) -> None:
        probe = ("import sys\nbefore = set(sys.modules)\n" + "".join(f"import {name}\n" for name in CORE) +
                 "top = {m.split('.')[0] for m in set(sys.modules) - before if not m.startswith('_sysconfigdata')}\n"
                 "print(sorted(top - set(sys.stdlib_module_names) - {'lease_sidecar_client'}))")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(__file__))
        self.assertEqual(out.stdout.strip(), "[]")

    def test_the_sql_ships_with_the_package(self) -> None:
        with open(lease_sidecar_client.sql_path(), encoding="utf-8") as sql:
            text = sql.read()
        for name in ("lease_fence(scope text, token bigint)", "lease_fence_reset(scope text)",
                     "lease_claim_tick(scope text, job text, scheduled_at timestamptz, token bigint)",
                     "'LF001'", "lease_fence_scopes", "lease_tick_ledger"):
            self.assertIn(name, text)


if __name__ == "__main__":
    unittest.main()
