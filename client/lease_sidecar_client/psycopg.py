"""The fence and the tick ledger from psycopg 3 (extra `psycopg`), blocking and asyncio (`a...`).

    from lease_sidecar_client import current_term
    from lease_sidecar_client import psycopg as lease_pg

    lease_pg.install(conn)                                   # once: runs sql/lease_fence.sql
    with lease_pg.fenced_transaction(conn, current_term()):  # fenced; timed out past the term
        conn.execute("update ...")

Every function takes a `Term` (its `lease` is the scope, its `fencing_token` the token) or a bare
token with `scope=`. A stale token raises `StaleToken` (SQLSTATE LF001); the transaction can only
roll back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from ._fence import (
    INSTALL_LOCK_SQL,
    STALE_TOKEN_SQLSTATE,
    fence_params,
    fenced_begin_params,
    first_value,
    idle_timeout_ms,
    last_tick_params,
    sql_text,
    stale_token,
    statements,
    tick_params,
    unfinished_ticks_query,
)
from ._term import StaleToken, Term

if TYPE_CHECKING:
    from .ticks import Schedule

__all__ = [
    "STALE_TOKEN_SQLSTATE", "StaleToken", "aclaim_tick", "afence", "afenced_transaction", "afinish_tick",
    "ainstall", "alast_tick", "aunfinished_ticks", "claim_tick", "fence", "fenced_transaction", "finish_tick",
    "idle_timeout_ms", "install", "last_tick", "missed_ticks", "unfinished_ticks",
]

SQL = statements(lambda name: f"%({name})s")
FENCED_BEGIN = SQL.fenced_begin


@contextlib.contextmanager
def _stale_token_as_exception() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as error:
        refused = stale_token(getattr(error, "sqlstate", None), error)
        if refused is not None:
            raise refused from error
        raise


# ---------------------------------------------------------------- blocking


def install(conn: psycopg.Connection[Any]) -> None:
    """Creates or upgrades the fence and ledger (idempotent; safe from many processes at once)."""
    with conn.transaction():
        conn.execute(INSTALL_LOCK_SQL)
        conn.execute(sql_text().encode())


def fence(conn: psycopg.Connection[Any], term: Term | int, scope: str | None = None) -> int:
    """`lease_fence(scope, token)` in the connection's current transaction: StaleToken if a higher
    token was seen in this scope. Its row lock is held until the transaction ends (or until a
    rollback to a savepoint taken before it: see `fenced_transaction`)."""
    params = fence_params(term, scope)
    with _stale_token_as_exception():
        conn.execute(SQL.fence, params)
    return params["token"]


def claim_tick(conn: psycopg.Connection[Any], term: Term | int, job: str, scheduled_at: datetime,
               scope: str | None = None) -> bool:
    """Fences and claims (job, scheduled_at): True for the one call that claims it, ever."""
    with _stale_token_as_exception():
        row = conn.execute(SQL.claim_tick, tick_params(term, job, scheduled_at, scope)).fetchone()
    return bool(first_value(row))


def finish_tick(conn: psycopg.Connection[Any], term: Term | int, job: str, scheduled_at: datetime,
                scope: str | None = None) -> bool:
    """Marks a tick this token claimed as finished; False if it was not (or already finished)."""
    return bool(first_value(conn.execute(SQL.finish_tick, tick_params(term, job, scheduled_at, scope)).fetchone()))


@contextlib.contextmanager
def fenced_transaction(conn: psycopg.Connection[Any], term: Term | int, scope: str | None = None,
                       idle_timeout_s: float | None = None) -> Iterator[psycopg.Connection[Any]]:
    """A transaction that is fenced first, with its timeouts set below the term's remaining time
    (or to `idle_timeout_s`; see `idle_timeout_ms`), so that a writer paused past its term (GC,
    SIGSTOP, a VM stall) has its session ended by the server instead of committing later:
    `idle_in_transaction_session_timeout` ends it when it sits idle between statements that long,
    and on PostgreSQL 17 or newer `transaction_timeout` also when the rest of the transaction takes
    that long, busy or not (see `_fence.fenced_begin_sql`). StaleToken if the token is stale;
    TermEnded if the term has no time left before it starts.

    Call it outside savepoints: it begins the transaction (psycopg opens a savepoint instead when
    one is already open), and a rollback to a savepoint taken before the fence undoes the fence,
    its row lock included, so what the transaction writes after that is not fenced."""
    params = fenced_begin_params(term, scope, idle_timeout_s)
    with conn.transaction():
        with _stale_token_as_exception():  # one round trip: the timeouts (SET LOCAL) and the fence
            conn.execute(SQL.fenced_begin, params)
        yield conn


def last_tick(conn: psycopg.Connection[Any], scope: str, job: str) -> datetime | None:
    """The latest tick of `job` claimed in `scope` (any term), or None."""
    return first_value(conn.execute(SQL.last_tick, last_tick_params(scope, job)).fetchone())


def unfinished_ticks(conn: psycopg.Connection[Any], scope: str | None = None) -> list[tuple[str, str, datetime, int,
                                                                                          datetime]]:
    """Claimed, never finished: (scope, job, scheduled_at, token, claimed_at), oldest first."""
    return conn.execute(*unfinished_ticks_query(SQL, scope)).fetchall()


def missed_ticks(conn: psycopg.Connection[Any], scope: str, job: str, schedule: Schedule, now: datetime,
                 misfire_grace_s: float | None = None, coalesce: bool = True) -> list[datetime]:
    """The ticks of `job` due by `now` since the latest one claimed in the ledger (see
    `lease_sidecar_client.ticks.missed_ticks`): what a new leader catches up."""
    from .ticks import missed_ticks as plan

    return plan(schedule, last_tick(conn, scope, job), now, misfire_grace_s=misfire_grace_s, coalesce=coalesce)


# ---------------------------------------------------------------- asyncio: the same, awaited


async def ainstall(conn: psycopg.AsyncConnection[Any]) -> None:
    async with conn.transaction():
        await conn.execute(INSTALL_LOCK_SQL)
        await conn.execute(sql_text().encode())


async def afence(conn: psycopg.AsyncConnection[Any], term: Term | int, scope: str | None = None) -> int:
    params = fence_params(term, scope)
    with _stale_token_as_exception():
        await conn.execute(SQL.fence, params)
    return params["token"]


async def aclaim_tick(conn: psycopg.AsyncConnection[Any], term: Term | int, job: str, scheduled_at: datetime,
                      scope: str | None = None) -> bool:
    with _stale_token_as_exception():
        cursor = await conn.execute(SQL.claim_tick, tick_params(term, job, scheduled_at, scope))
        row = await cursor.fetchone()
    return bool(first_value(row))


async def afinish_tick(conn: psycopg.AsyncConnection[Any], term: Term | int, job: str, scheduled_at: datetime,
                       scope: str | None = None) -> bool:
    cursor = await conn.execute(SQL.finish_tick, tick_params(term, job, scheduled_at, scope))
    return bool(first_value(await cursor.fetchone()))


@contextlib.asynccontextmanager
async def afenced_transaction(conn: psycopg.AsyncConnection[Any], term: Term | int, scope: str | None = None,
                              idle_timeout_s: float | None = None) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    params = fenced_begin_params(term, scope, idle_timeout_s)
    async with conn.transaction():
        with _stale_token_as_exception():
            await conn.execute(SQL.fenced_begin, params)
        yield conn


async def alast_tick(conn: psycopg.AsyncConnection[Any], scope: str, job: str) -> datetime | None:
    cursor = await conn.execute(SQL.last_tick, last_tick_params(scope, job))
    return first_value(await cursor.fetchone())


async def aunfinished_ticks(conn: psycopg.AsyncConnection[Any], scope: str | None = None) -> list[Any]:
    cursor = await conn.execute(*unfinished_ticks_query(SQL, scope))
    return await cursor.fetchall()
