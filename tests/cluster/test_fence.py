"""The fencing token checked where the work lands, and the tick ledger, on a real PostgreSQL and a
real Redis (tests/servers.py), with real sidecars on the control plane where a term matters.

Executions are counted from an effect table with no uniqueness of its own: a tick that ran twice
would show as two rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lease_sidecar_client
import psycopg
import pytest
import redis
import sqlalchemy
from lease_sidecar_client import Sidecar, StaleToken, Term
from lease_sidecar_client import psycopg as lease_pg
from lease_sidecar_client import sqlalchemy as lease_sa
from lease_sidecar_client.loop import LeaderLoop, Tick
from lease_sidecar_client.redis import RedisFence

from tests.cluster import sidecars

ROOT = Path(__file__).resolve().parents[2]
PATIENCE_S = 60.0  # waits for events, never a timed assertion
EFFECTS = "CREATE TABLE effects (id bigserial, tag text NOT NULL, token bigint, scheduled_at timestamptz," \
          " written_at timestamptz NOT NULL DEFAULT clock_timestamp())"


@pytest.fixture()
def dsn(postgres_dsn: str) -> Iterator[str]:
    """A database of this test's own on the session's PostgreSQL, with the fence installed."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    own = postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(own, autocommit=True) as conn:
        lease_pg.install(conn)
        conn.execute(EFFECTS)
    yield own
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def term(token: int, scope: str = "ns/app", valid_for_s: float = 60.0) -> Term:
    return Term("pod", scope, token, time.monotonic() + valid_for_s)


def effects(dsn: str) -> list[tuple[str, int | None, datetime | None]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT tag, token, scheduled_at FROM effects ORDER BY id").fetchall()


def write(conn: psycopg.Connection, tag: str, token: int) -> None:
    conn.execute("INSERT INTO effects (tag, token) VALUES (%s, %s)", (tag, token))


# ---------------------------------------------------------------- PostgreSQL, no sidecar needed


def test_postgres_refuses_a_stale_token_accepts_an_equal_one_and_only_reset_goes_down(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for tag, token in (("first", 5), ("same term again", 5), ("next term", 9)):
            with lease_pg.fenced_transaction(conn, term(token)):
                write(conn, tag, token)
        with pytest.raises(StaleToken) as refused, lease_pg.fenced_transaction(conn, term(8)):
            write(conn, "stale", 8)
        assert refused.value.__cause__.sqlstate == "LF001"  # type: ignore[union-attr]
        with pytest.raises(psycopg.Error) as plain, conn.transaction():  # the SQL, as any language calls it
            conn.execute("SELECT lease_fence('ns/app', 1)")
        assert plain.value.sqlstate == "LF001" and "stale fencing token" in str(plain.value)
        assert conn.execute("SELECT token FROM lease_fence_scopes WHERE scope = 'ns/app'").fetchone() == (9,)
        with lease_pg.fenced_transaction(conn, term(3, scope="ns/other")):  # scopes are independent
            write(conn, "other scope", 3)
        assert conn.execute("SELECT lease_fence_reset('ns/app')").fetchone() == (True,)
        with lease_pg.fenced_transaction(conn, term(2)):
            write(conn, "after reset", 2)
    assert [tag for tag, _, _ in effects(dsn)] == ["first", "same term again", "next term", "other scope",
                                                  "after reset"]


def test_the_sql_file_installs_again_over_itself(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with lease_pg.fenced_transaction(conn, term(4)):
            assert lease_pg.claim_tick(conn, term(4), "job", datetime(2026, 1, 1, tzinfo=UTC))
        lease_pg.install(conn)  # an upgrade keeps the scopes and the ledger
        assert conn.execute("SELECT token FROM lease_fence_scopes").fetchall() == [(4,)]
        assert lease_pg.last_tick(conn, "ns/app", "job") == datetime(2026, 1, 1, tzinfo=UTC)


def _backend_waits_for_a_lock(conn: psycopg.Connection, pid: int) -> bool:
    row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return bool(row and row[0] == "Lock")


def test_a_higher_token_waits_for_the_open_lower_one_so_commits_come_in_token_order(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as setup:
        with lease_pg.fenced_transaction(setup, term(5)):
            pass  # the scope exists at 5
    old = psycopg.connect(dsn, autocommit=True)
    new = psycopg.connect(dsn, autocommit=True)
    watcher = psycopg.connect(dsn, autocommit=True)
    try:
        old_tx = lease_pg.fenced_transaction(old, term(5))
        old_tx.__enter__()
        write(old, "old term, in flight", 5)
        finished: list[str] = []

        def new_term_writes() -> None:
            with lease_pg.fenced_transaction(new, term(6)):
                write(new, "new term", 6)
            finished.append("new")

        thread = threading.Thread(target=new_term_writes)
        thread.start()
        new_pid = new.info.backend_pid
        sidecars.wait_for(lambda: _backend_waits_for_a_lock(watcher, new_pid), PATIENCE_S, 0.02)
        assert finished == []  # the new term's fence waits on the old term's row lock ...
        old_tx.__exit__(None, None, None)  # ... until the old transaction commits
        thread.join(PATIENCE_S)
        assert finished == ["new"]
        with pytest.raises(StaleToken), lease_pg.fenced_transaction(old, term(5)):
            write(old, "old term, too late", 5)
    finally:
        for conn in (old, new, watcher):
            conn.close()
    assert [tag for tag, _, _ in effects(dsn)] == ["old term, in flight", "new term"]


def test_the_server_ends_a_paused_writers_open_transaction(dsn: str) -> None:
    paused = psycopg.connect(dsn, autocommit=True)
    watcher = psycopg.connect(dsn, autocommit=True)
    try:
        pid = paused.info.backend_pid
        with pytest.raises(psycopg.Error) as killed, lease_pg.fenced_transaction(paused, term(7, valid_for_s=0.5)):
            write(paused, "paused writer", 7)
            # The writer pauses (as under SIGSTOP or a GC): the server ends the session, not later.
            sidecars.wait_for(lambda: watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                                      (pid,)).fetchone() == (0,), PATIENCE_S, 0.05)
            # The commit at the end of the block fails on the dead connection.
        # Ended by the idle timeout, or on PostgreSQL 17+ by transaction_timeout (same value, started
        # first); or the commit found the connection closed.
        assert isinstance(killed.value, psycopg.errors.IdleInTransactionSessionTimeout
                          | psycopg.errors.TransactionTimeout | psycopg.OperationalError)
    finally:
        paused.close()
        watcher.close()
    assert effects(dsn) == []


TRANSACTION_TIMEOUT_SINCE = 170000  # server_version_num of PostgreSQL 17, which added transaction_timeout


def _server_has_transaction_timeout(conn: psycopg.Connection) -> bool:
    return conn.info.server_version >= TRANSACTION_TIMEOUT_SINCE


def _timeouts(conn: psycopg.Connection) -> tuple[str, str | None]:
    row = conn.execute("SELECT current_setting('idle_in_transaction_session_timeout'),"
                       " current_setting('transaction_timeout', true)").fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_fenced_transaction_sets_the_timeouts_this_server_has_for_itself_only(dsn: str) -> None:
    """Both timeouts on PostgreSQL 17 or newer, the idle one alone before (where
    transaction_timeout does not exist); SET LOCAL, so the session's own values come back after."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        with lease_pg.fenced_transaction(conn, term(5), idle_timeout_s=30):
            idle, whole = _timeouts(conn)
        assert idle == "30s"
        if _server_has_transaction_timeout(conn):
            assert whole == "30s"
        else:
            assert whole is None  # no such parameter: the helper did not try to set it
        assert _timeouts(conn) == ("0", "0" if _server_has_transaction_timeout(conn) else None)
        if _server_has_transaction_timeout(conn):
            # A session's own stricter transaction_timeout is kept; a looser one gives way to the term's.
            conn.execute("SET transaction_timeout = '5s'")
            with lease_pg.fenced_transaction(conn, term(5), idle_timeout_s=30):
                assert _timeouts(conn) == ("30s", "5s")
            conn.execute("SET transaction_timeout = '10min'")
            with lease_pg.fenced_transaction(conn, term(5), idle_timeout_s=30):
                assert _timeouts(conn) == ("30s", "30s")
            assert _timeouts(conn) == ("0", "10min")


def test_a_busy_transaction_outlives_the_idle_timeout_and_only_transaction_timeout_ends_it(dsn: str) -> None:
    """What bounds what: the idle timeout counts only the time between statements, so a statement
    that runs longer than it (here pg_sleep, as a slow job or a lock wait would) is not ended by it;
    PostgreSQL 17's transaction_timeout ends the transaction whatever it does."""
    timeout_s, busy_s = 2.0, 3.0
    with psycopg.connect(dsn, autocommit=True) as conn:
        has_transaction_timeout = _server_has_transaction_timeout(conn)
        try:
            with lease_pg.fenced_transaction(conn, term(5), idle_timeout_s=timeout_s):
                conn.execute("SELECT pg_sleep(%s)", (busy_s,))
                write(conn, "busy past the timeout", 5)
            ended = None
        except psycopg.Error as error:
            ended = error
    if has_transaction_timeout:
        assert ended is not None and effects(dsn) == []
    else:
        assert ended is None, ended
        assert [tag for tag, _, _ in effects(dsn)] == ["busy past the timeout"]


def _scope_is_locked(watcher: psycopg.Connection, scope: str = "ns/app") -> bool:
    """Whether an open transaction holds the scope's fence row lock (asked without waiting)."""
    try:
        with watcher.transaction():
            watcher.execute("SELECT 1 FROM lease_fence_scopes WHERE scope = %s FOR UPDATE NOWAIT", (scope,))
        return False
    except psycopg.errors.LockNotAvailable:
        return True


class _Retry(Exception):
    pass


def test_a_rollback_to_a_savepoint_taken_before_the_fence_undoes_the_fence_and_its_row_lock(dsn: str) -> None:
    """PostgreSQL releases the locks a subtransaction took, row locks included, when it rolls back to
    the savepoint before them. A fence inside a savepoint that is rolled back then no longer orders
    the transaction's later writes: a newer term commits meanwhile, and the old write lands after it."""
    with psycopg.connect(dsn, autocommit=True) as setup:
        with lease_pg.fenced_transaction(setup, term(5)):
            pass  # the scope exists at 5
    old = psycopg.connect(dsn, autocommit=True)
    new = psycopg.connect(dsn, autocommit=True)
    watcher = psycopg.connect(dsn, autocommit=True)
    try:
        new.execute("SET lock_timeout = '20s'")  # were the row still locked, its fence fails, never hangs
        with old.transaction():  # the app's own transaction ...
            with pytest.raises(_Retry), lease_pg.fenced_transaction(old, term(5)):  # ... makes this a savepoint
                assert _scope_is_locked(watcher)
                raise _Retry  # a step the app retries: psycopg rolls back to the savepoint
            assert not _scope_is_locked(watcher)  # the fence is gone with its savepoint
            write(old, "old term, after the rollback to its savepoint", 5)
            with lease_pg.fenced_transaction(new, term(6)):  # does not wait for the old transaction
                write(new, "new term", 6)
        # The old transaction committed after the new term's: unfenced, its write landed late.
        with pytest.raises(StaleToken), lease_pg.fenced_transaction(old, term(5)):
            pass
    finally:
        for conn in (old, new, watcher):
            conn.close()
    assert sorted(tag for tag, _, _ in effects(dsn)) == ["new term", "old term, after the rollback to its savepoint"]


def test_a_fence_outside_the_savepoints_keeps_its_row_lock_through_their_rollbacks(dsn: str) -> None:
    """The rule for users: fence in the top-level transaction, before any savepoint (or after the
    last rollback to one). Savepoints rolled back after the fence, or released, keep its lock."""
    with psycopg.connect(dsn, autocommit=True) as setup:
        with lease_pg.fenced_transaction(setup, term(5)):
            pass
    conn = psycopg.connect(dsn, autocommit=True)
    watcher = psycopg.connect(dsn, autocommit=True)
    try:
        with lease_pg.fenced_transaction(conn, term(5)):
            with pytest.raises(_Retry), conn.transaction():  # a savepoint after the fence, rolled back
                lease_pg.fence(conn, term(5))  # even a second fence inside it
                write(conn, "rolled back", 5)
                raise _Retry
            assert _scope_is_locked(watcher)
            with conn.transaction():  # a savepoint released (its locks pass to the transaction)
                write(conn, "kept", 5)
            assert _scope_is_locked(watcher)
        with conn.transaction():
            with pytest.raises(_Retry), conn.transaction():
                raise _Retry
            lease_pg.fence(conn, term(5))  # after the last rollback to a savepoint
            assert _scope_is_locked(watcher)
        with conn.transaction():  # a fence inside a savepoint that is released, not rolled back
            with conn.transaction():
                lease_pg.fence(conn, term(5))
            assert _scope_is_locked(watcher)
        assert not _scope_is_locked(watcher)
    finally:
        conn.close()
        watcher.close()
    assert [tag for tag, _, _ in effects(dsn)] == ["kept"]


def test_a_term_with_no_time_left_does_not_start_a_transaction(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(lease_sidecar_client.TermEnded), \
            lease_pg.fenced_transaction(conn, Term("pod", "ns/app", 3, time.monotonic() - 1)):
        write(conn, "never", 3)
    assert effects(dsn) == []


def test_the_ledger_claims_each_tick_once_across_two_concurrent_claimers(dsn: str) -> None:
    """Two claimers race for the same 200 ticks (same term, e.g. two replicas of one leader's app,
    then an old and a new term); each tick's effect commits in its claim's transaction."""
    ticks = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=index) for index in range(200)]
    claimed = {"a": 0, "b": 0}
    stale = {"a": 0, "b": 0}
    start = threading.Barrier(2)

    def claimer(name: str, token_of: dict[int, int]) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            start.wait()
            for index, tick in enumerate(ticks):
                token = token_of.get(index, token_of[-1])
                try:
                    with lease_pg.fenced_transaction(conn, term(token)):
                        if lease_pg.claim_tick(conn, term(token), "report", tick):
                            conn.execute("INSERT INTO effects (tag, token, scheduled_at) VALUES (%s, %s, %s)",
                                         (name, token, tick))
                            claimed[name] += 1
                except StaleToken:
                    stale[name] += 1

    # a: token 10 throughout; b: token 10, then from tick 100 on token 11 (a newer term).
    threads = [threading.Thread(target=claimer, args=("a", {-1: 10})),
               threading.Thread(target=claimer, args=("b", {**{i: 10 for i in range(100)}, -1: 11}))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE_S * 2)
    rows = effects(dsn)
    per_tick: dict[datetime, int] = {}
    for _tag, _token, tick in rows:
        assert tick is not None
        per_tick[tick] = per_tick.get(tick, 0) + 1
    assert max(per_tick.values()) == 1, "a tick ran twice"
    assert claimed["a"] + claimed["b"] == len(rows) <= len(ticks)
    # Once b's newer term wrote, a's older token is refused: never a write of token 10 after one of 11.
    tokens = [token for _tag, token, _tick in rows]
    assert tokens == sorted(tokens)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM lease_tick_ledger").fetchone() == (len(rows),)


def test_a_claimed_but_unfinished_tick_is_reported_and_never_claimed_again(dsn: str) -> None:
    """At most once: the claim commits first; a job that never finishes leaves its tick reported."""
    tick = datetime(2026, 1, 1, 12, tzinfo=UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with lease_pg.fenced_transaction(conn, term(5)):
            assert lease_pg.claim_tick(conn, term(5), "call-partner", tick)
        # ... the job starts and its pod dies: no finish. A newer term looks at the ledger:
        assert [(job, at, token) for _, job, at, token, _ in lease_pg.unfinished_ticks(conn, "ns/app")] == [
            ("call-partner", tick, 5)]
        with lease_pg.fenced_transaction(conn, term(6)):
            assert not lease_pg.claim_tick(conn, term(6), "call-partner", tick)  # never rerun
            assert not lease_pg.finish_tick(conn, term(6), "call-partner", tick)  # not its claim
        with conn.transaction():
            assert lease_pg.finish_tick(conn, term(5), "call-partner", tick)  # the claimer's own report
            assert not lease_pg.finish_tick(conn, term(5), "call-partner", tick)
        assert lease_pg.unfinished_ticks(conn) == []


def test_sqlalchemy_fences_and_claims_like_psycopg(dsn: str) -> None:
    engine = sqlalchemy.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"))
    try:
        lease_sa.install(engine)  # idempotent, through SQLAlchemy this time
        tick = datetime(2026, 1, 1, tzinfo=UTC)
        with engine.connect() as conn:
            with lease_sa.fenced_transaction(conn, term(20)):
                assert lease_sa.claim_tick(conn, term(20), "job", tick)
                conn.execute(sqlalchemy.text("INSERT INTO effects (tag, token) VALUES ('sa', 20)"))
            with lease_sa.fenced_transaction(conn, term(20)):
                assert not lease_sa.claim_tick(conn, term(20), "job", tick)
            with pytest.raises(StaleToken), lease_sa.fenced_transaction(conn, term(19)):
                conn.execute(sqlalchemy.text("INSERT INTO effects (tag, token) VALUES ('stale', 19)"))
            assert lease_sa.last_tick(conn, "ns/app", "job") == tick
    finally:
        engine.dispose()
    assert [tag for tag, _, _ in effects(dsn)] == ["sa"]


async def test_sqlalchemy_async_twins_fence_and_claim_on_an_async_engine(dsn: str) -> None:
    """The async twins through SQLAlchemy's asyncio extension (greenlet), psycopg 3's async driver:
    an AsyncConnection and an AsyncSession, the timeouts and the fence in one statement, a stale
    token mapped to StaleToken from SQLAlchemy's wrapped driver error."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+psycopg://"))
    tick = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        async with engine.connect() as conn:
            async with lease_sa.afenced_transaction(conn, term(40), idle_timeout_s=30):
                idle = (await conn.execute(sqlalchemy.text(
                    "SELECT current_setting('idle_in_transaction_session_timeout')"))).scalar()
                assert idle == "30s"
                assert await lease_sa.aclaim_tick(conn, term(40), "job", tick)
                await conn.execute(sqlalchemy.text("INSERT INTO effects (tag, token) VALUES ('async sa', 40)"))
            async with lease_sa.afenced_transaction(conn, term(40)):
                assert not await lease_sa.aclaim_tick(conn, term(40), "job", tick)  # claimed once, ever
            async with conn.begin():
                assert await lease_sa.afinish_tick(conn, term(40), "job", tick)
                assert await lease_sa.afence(conn, term(41)) == 41
            with pytest.raises(StaleToken) as refused:
                async with lease_sa.afenced_transaction(conn, term(40)):
                    await conn.execute(sqlalchemy.text("INSERT INTO effects (tag, token) VALUES ('stale', 40)"))
            assert isinstance(refused.value.__cause__, sqlalchemy.exc.DBAPIError)
            with pytest.raises(StaleToken):
                async with conn.begin():
                    await lease_sa.aclaim_tick(conn, term(39), "job", tick + timedelta(seconds=1))
        async with AsyncSession(engine) as session:
            async with lease_sa.afenced_transaction(session, term(41)):
                await session.execute(sqlalchemy.text("INSERT INTO effects (tag, token) VALUES ('async session', 41)"))
            with pytest.raises(StaleToken):
                async with lease_sa.afenced_transaction(session, term(40)):
                    await session.execute(sqlalchemy.text("INSERT INTO effects (tag, token) VALUES ('stale', 40)"))
    finally:
        await engine.dispose()
    assert [tag for tag, _, _ in effects(dsn)] == ["async sa", "async session"]
    with psycopg.connect(dsn) as check:
        assert check.execute("SELECT token FROM lease_fence_scopes WHERE scope = 'ns/app'").fetchone() == (41,)
        assert lease_pg.unfinished_ticks(check) == []


async def test_async_psycopg_twins(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        tick = datetime(2026, 1, 1, tzinfo=UTC)
        async with lease_pg.afenced_transaction(conn, term(30)):
            assert await lease_pg.aclaim_tick(conn, term(30), "job", tick)
            await conn.execute("INSERT INTO effects (tag, token) VALUES ('async', 30)")
        async with conn.transaction():
            assert await lease_pg.afinish_tick(conn, term(30), "job", tick)
        with pytest.raises(StaleToken):
            async with lease_pg.afenced_transaction(conn, term(29)):
                await conn.execute("INSERT INTO effects (tag, token) VALUES ('stale', 29)")
        assert await lease_pg.aunfinished_ticks(conn) == []
    assert [tag for tag, _, _ in effects(dsn)] == ["async"]


# ---------------------------------------------------------------- Redis


def test_redis_refuses_a_stale_token_atomically_with_the_write(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    scope = f"ns/{uuid.uuid4().hex[:8]}"
    fence = RedisFence(client, scope)
    key = f"report:{{{scope}}}"
    assert fence.set(term(5, scope), key, "term 5") is True
    assert fence.set(term(5, scope), key, "term 5 again") is True  # equal token: same term
    assert fence.rpush(term(7, scope), f"log:{{{scope}}}", "seven") == 1
    with pytest.raises(StaleToken):
        fence.set(term(6, scope), key, "term 6, stale")
    assert client.get(key) == "term 5 again"  # the refused write did not happen
    assert fence.token() == 7
    # Tokens larger than a double holds exactly still compare exactly.
    big = 2**62 + 1
    fence.check(big)
    with pytest.raises(StaleToken):
        fence.check(big - 1)
    # The server forgot the script (restart, SCRIPT FLUSH): reloaded, and the write still checked.
    client.script_flush()
    assert fence.set(big, key, "after flush") is True
    client.script_flush()
    with pytest.raises(StaleToken):
        fence.set(7, key, "stale after flush")
    assert client.get(key) == "after flush"
    assert fence.reset() and fence.set(1, key, "after reset") is True


# ---------------------------------------------------------------- with real sidecars


PAUSED_APP = textwrap.dedent("""
    import sys, psycopg
    from lease_sidecar_client import Sidecar, StaleToken
    from lease_sidecar_client import psycopg as lease_pg
    url, dsn = sys.argv[1], sys.argv[2]
    term = Sidecar(url).wait_for_term(60)
    print("term", term.fencing_token, flush=True)
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        with lease_pg.fenced_transaction(conn, term):       # idle-killed past the term
            conn.execute("INSERT INTO effects (tag, token) VALUES ('paused in its transaction', %s)",
                         (term.fencing_token,))
            print("in transaction", flush=True)
            sys.stdin.readline()                             # SIGSTOPped here by the test
        print("committed", flush=True)
    except psycopg.Error as error:
        print("refused open transaction:", type(error).__name__, flush=True)
    # The same app, not looking at the clock, writes again with its old token: the storage refuses.
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            with lease_pg.fenced_transaction(conn, term.fencing_token, scope=term.lease, idle_timeout_s=30):
                conn.execute("INSERT INTO effects (tag, token) VALUES ('after the pause', %s)", (term.fencing_token,))
            print("committed again", flush=True)
        except StaleToken:
            print("refused stale token", flush=True)
""")


def test_an_app_sigstopped_past_its_term_resumes_and_its_writes_are_refused(namespace: str, tmp_path: Path,
                                                                            dsn: str) -> None:
    first = sidecars.start("first", "fenced", namespace, tmp_path)
    sidecars.wait_for(lambda: sidecars.leaders([first]) == ["first"], PATIENCE_S)
    second = sidecars.start("second", "fenced", namespace, tmp_path)
    app = subprocess.Popen([sys.executable, "-c", PAUSED_APP, first.url, dsn], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert app.stdout is not None and app.stdin is not None
        old_token = int(app.stdout.readline().split()[1])
        assert app.stdout.readline().strip() == "in transaction"
        app.send_signal(signal.SIGSTOP)
        # Its term ends while it is stopped: the sidecar resigns, the other takes over.
        first.post("/leader/resign?sit_out=60")
        new_term = Sidecar(second.url).wait_for_term(PATIENCE_S)
        assert new_term.fencing_token > old_token and new_term.lease == f"{namespace}/fenced"
        with psycopg.connect(dsn, autocommit=True) as conn, lease_pg.fenced_transaction(conn, new_term):
            # Waits for the paused app's open transaction until the server kills it (idle timeout).
            write(conn, "new leader", new_term.fencing_token)
        app.send_signal(signal.SIGCONT)
        app.stdin.write("go\n")
        app.stdin.flush()
        rest = app.stdout.read()
        app.wait(PATIENCE_S)
    finally:
        if app.poll() is None:
            app.send_signal(signal.SIGCONT)
            app.kill()
            app.wait(10)
        sidecars.stop_all([first, second])
    assert "refused open transaction:" in rest, rest
    assert "refused stale token" in rest, rest
    assert [tag for tag, _, _ in effects(dsn)] == ["new leader"]


def test_the_loop_catches_up_missed_ticks_once_after_its_leader_dies(namespace: str, tmp_path: Path,
                                                                     dsn: str) -> None:
    """Two pods, each a sidecar and a LeaderLoop app; the leader's sidecar is SIGKILLed. The new
    leader runs the ticks missed meanwhile from the ledger; no tick runs twice, none is skipped."""
    anchor = datetime.now(UTC).replace(microsecond=0)
    first = sidecars.start("first", "loop", namespace, tmp_path)
    sidecars.wait_for(lambda: sidecars.leaders([first]) == ["first"], PATIENCE_S)
    second = sidecars.start("second", "loop", namespace, tmp_path)

    def make_loop(sidecar: sidecars.Sidecar, name: str) -> LeaderLoop:
        loop = LeaderLoop(lambda: psycopg.connect(dsn), Sidecar(sidecar.url), heartbeat_interval_s=0.2,
                          refresh_s=0.2)

        def tick(tick: Tick) -> None:
            assert tick.conn is not None
            tick.conn.execute("INSERT INTO effects (tag, token, scheduled_at) VALUES (%s, %s, %s)",
                              (f"{name} late {tick.late_s:.3f}", tick.term.fencing_token, tick.scheduled_at))

        def at_most_once(tick: Tick) -> None:
            assert tick.conn is None  # its effect lands elsewhere: here, through a connection of its own
            with psycopg.connect(dsn, autocommit=True) as own:
                own.execute("INSERT INTO effects (tag, token, scheduled_at) VALUES (%s, %s, %s)",
                            (f"at-most-once {name}", tick.term.fencing_token, tick.scheduled_at))

        loop.add_job("every-half-second", tick, every_s=0.5, anchor=anchor, coalesce=False)
        loop.add_job("at-most-once", at_most_once, every_s=0.7, anchor=anchor, exactly_once=False, coalesce=False)
        return loop

    loops = [make_loop(first, "first"), make_loop(second, "second")]
    threads = [threading.Thread(target=loop.run, daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    try:
        sidecars.wait_for(lambda: sum(tag.startswith("first") for tag, _, _ in effects(dsn)) >= 4, PATIENCE_S, 0.1)
        first.kill()  # the leader's sidecar dies: its app's term ends at its deadline
        sidecars.wait_for(lambda: any(tag.startswith("second") for tag, _, _ in effects(dsn)), PATIENCE_S, 0.1)
        sidecars.wait_for(lambda: sum(tag.startswith("second") for tag, _, _ in effects(dsn)) >= 4, PATIENCE_S, 0.1)
        # The loop heartbeats its sidecar from its own thread with the seed's update_info fields.
        def beat_info() -> dict[str, Any]:
            return (second.leader() or {}).get("app", {}).get("info", {})

        sidecars.wait_for(lambda: "next_due_task" in beat_info(), PATIENCE_S, 0.05)
        info = beat_info()
        assert info["schedule_count"] == 2, info
        assert info["next_due_task"].split("@")[0] in ("every-half-second", "at-most-once"), info
    finally:
        for loop in loops:
            loop.stop()
        for thread in threads:
            thread.join(PATIENCE_S)
        sidecars.stop_all([first, second])
    everything = effects(dsn)
    elsewhere = [tick for tag, _, tick in everything if tag.startswith("at-most-once")]
    assert elsewhere and len(elsewhere) == len(set(elsewhere)), "an at-most-once tick ran twice"
    with psycopg.connect(dsn) as conn:  # each run reported its end: nothing left unfinished
        assert lease_pg.unfinished_ticks(conn) == []
    rows = [row for row in everything if not row[0].startswith("at-most-once")]
    ticks = [tick for _, _, tick in rows]
    assert len(ticks) == len(set(ticks)), "a tick ran twice"
    assert ticks == sorted(ticks)
    expected = [ticks[0] + timedelta(seconds=0.5 * k) for k in range(len(ticks))]
    assert ticks == expected, "a tick was skipped"
    caught_up = [tag for tag, _, _ in rows if tag.startswith("second") and float(tag.split()[-1]) > 1.0]
    assert caught_up, f"the new leader caught nothing up: {rows}"
    assert loops[1].counts.ran >= 4 and loops[1].counts.failed == 0


async def test_redis_async_fence(redis_url: str) -> None:
    import redis.asyncio
    from lease_sidecar_client.redis import AsyncRedisFence

    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        scope = f"ns/{uuid.uuid4().hex[:8]}"
        fence = AsyncRedisFence(client, scope)
        key = f"report:{{{scope}}}"
        assert await fence.set(term(3, scope), key, "three") is True
        await client.script_flush()  # reloaded on NOSCRIPT
        with pytest.raises(StaleToken):
            await fence.set(term(2, scope), key, "two")
        assert await client.get(key) == "three"
        # The rest of the blocking fence's writes, awaited: each checked, the stale one not applied.
        log, count, info = (f"{name}:{{{scope}}}" for name in ("log", "count", "info"))
        assert await fence.rpush(term(3, scope), log, "a", "b") == 2
        assert await fence.incrby(term(4, scope), count, 5) == 5
        assert await fence.hset(term(4, scope), info, {"by": "four", "at": "now"}) == 2
        with pytest.raises(StaleToken):
            await fence.incrby(term(3, scope), count, 1)
        assert await client.get(count) == "5"
        assert await fence.token() == 4
        await fence.check(term(4, scope))
        assert await fence.delete(term(4, scope), log, count) == 2
        assert await fence.reset() and await fence.token() is None
    finally:
        await client.aclose()
