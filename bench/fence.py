"""The storage fence's cost per write and the tick ledger's claims per second, on a real PostgreSQL
and a real Redis started from Debian packages by tests/servers.py (loopback, fsync off as in the
tests: the figures are the fence's own work and round trips, not the disk's).

Each run writes WRITES rows one transaction each, plain and fenced (`fenced_transaction`: SET LOCAL
idle_in_transaction_session_timeout (and transaction_timeout on PostgreSQL 17+) + lease_fence + the
INSERT), interleaved in blocks so that the machine's other load falls on both alike; its figure is
the median per write. Claims: CLAIMS ticks claimed one transaction each (fence + ledger insert +
commit) by one connection. Rows are in bench/results.json's shape: {system, scenario, unit,
median, min, max, runs}, over the runs.

    python bench/fence.py            # BENCH_RUNS runs (5); merges its rows into bench/results.json
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import results  # bench/results.py, beside this script

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

SYSTEM = "lease-sidecar-client"
WRITES = int(os.environ.get("BENCH_FENCE_WRITES", "1000"))
CLAIMS = int(os.environ.get("BENCH_FENCE_CLAIMS", "2000"))
BLOCK = 50  # plain and fenced writes alternate in blocks of this many

SCENARIOS: dict[str, tuple[str, str]] = {
    "pg_write_ms": ("ms", "one INSERT in its own transaction, median per write (lower is better)"),
    "pg_fenced_write_ms": ("ms", "same, in fenced_transaction: SET LOCAL + lease_fence + INSERT (lower is better)"),
    "pg_fence_cost_per_write_ms": ("ms", "fenced minus plain, per write (lower is better)"),
    "pg_ledger_claims_per_s": ("claims/s", "lease_claim_tick, one transaction each, one connection (higher is better)"),
    "redis_set_ms": ("ms", "SET, median per write (lower is better)"),
    "redis_fenced_set_ms": ("ms", "SET through the fence's Lua script (EVALSHA) (lower is better)"),
    "redis_fence_cost_per_write_ms": ("ms", "fenced minus plain, per write (lower is better)"),
}


def _timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def one_run(dsn: str, redis_url: str) -> dict[str, float]:
    import psycopg
    import redis
    from lease_sidecar_client import Term
    from lease_sidecar_client import psycopg as lease_pg
    from lease_sidecar_client.redis import RedisFence

    term = Term("bench", f"bench/{uuid.uuid4().hex[:8]}", 42, time.monotonic() + 3600)
    plain_ms: list[float] = []
    fenced_ms: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_effects (id bigserial, token bigint, at timestamptz)")

        def plain() -> None:
            with conn.transaction():
                conn.execute("INSERT INTO bench_effects (token, at) VALUES (%s, now())", (0,))

        def fenced() -> None:
            with lease_pg.fenced_transaction(conn, term):
                conn.execute("INSERT INTO bench_effects (token, at) VALUES (%s, now())", (term.fencing_token,))

        for _ in range(20):  # warm-up: plans, caches, the scope's row
            plain()
            fenced()
        for block in range(WRITES // BLOCK):
            first, second = (plain, fenced) if block % 2 == 0 else (fenced, plain)
            for action in (first, second):
                into = plain_ms if action is plain else fenced_ms
                into.extend(_timed(action) for _ in range(BLOCK))
        anchor = datetime(2026, 1, 1, tzinfo=UTC)
        job = uuid.uuid4().hex[:8]
        started = time.perf_counter()
        for index in range(CLAIMS):
            with lease_pg.fenced_transaction(conn, term):
                lease_pg.claim_tick(conn, term, job, anchor + timedelta(seconds=index))
        claims_per_s = CLAIMS / (time.perf_counter() - started)
    client = redis.Redis.from_url(redis_url)
    fence = RedisFence(client, term.lease)
    redis_plain: list[float] = []
    redis_fenced: list[float] = []
    for block in range(WRITES // BLOCK):  # interleaved in blocks, as above
        for fenced in ((False, True) if block % 2 == 0 else (True, False)):
            if fenced:
                redis_fenced.extend(_timed(lambda: fence.set(term, "bench:fenced", "x")) for _ in range(BLOCK))
            else:
                redis_plain.extend(_timed(lambda: client.set("bench:plain", "x")) for _ in range(BLOCK))
    client.close()
    return {"pg_write_ms": statistics.median(plain_ms), "pg_fenced_write_ms": statistics.median(fenced_ms),
            "pg_fence_cost_per_write_ms": statistics.median(fenced_ms) - statistics.median(plain_ms),
            "pg_ledger_claims_per_s": claims_per_s,
            "redis_fence_cost_per_write_ms": statistics.median(redis_fenced) - statistics.median(redis_plain),
            "redis_set_ms": statistics.median(redis_plain), "redis_fenced_set_ms": statistics.median(redis_fenced)}


def measure(runs: int) -> list[dict[str, Any]]:
    """Starts PostgreSQL and Redis (tests/servers.py), measures `runs` runs, stops them."""
    from tests import servers

    postgres = servers.start_postgres()
    redis_server = servers.start_redis()
    try:
        import psycopg
        from lease_sidecar_client import psycopg as lease_pg

        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            lease_pg.install(conn)
        values: dict[str, list[float]] = {name: [] for name in SCENARIOS}
        for run in range(runs):
            result = one_run(postgres.dsn, redis_server.url)
            for name, value in result.items():
                values[name].append(value)
            print(f"fence run {run + 1}/{runs}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
    finally:
        postgres.stop()
        redis_server.stop()
    return [results.summary_row(SYSTEM, name, unit, values[name], 1 if unit == "claims/s" else 3)
            for name, (unit, _caption) in SCENARIOS.items()]


def main() -> int:
    runs = int(os.environ.get("BENCH_RUNS", "5"))
    rows = measure(runs)
    results.merge_into(rows)
    for row in rows:
        print(f"{row['scenario']:<30} {row['unit']:<9} median {row['median']:<10g} "
              f"[{row['min']:g}, {row['max']:g}] over {row['runs']} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
