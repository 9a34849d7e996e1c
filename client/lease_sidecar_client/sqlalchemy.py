"""The fence and the tick ledger from SQLAlchemy 2 (extra `sqlalchemy`) on PostgreSQL, for a
Connection or a Session (and AsyncConnection / AsyncSession, prefixed `a`: extra
`sqlalchemy-asyncio`, SQLAlchemy's own `asyncio` extra, which brings greenlet).

    from lease_sidecar_client import current_term
    from lease_sidecar_client import sqlalchemy as lease_sa

    lease_sa.install(engine)
    with Session(engine) as session, lease_sa.fenced_transaction(session, current_term()):
        session.add(Report(...))                      # committed only if the token is not stale

Same SQL and guarantee as `lease_sidecar_client.psycopg`; StaleToken for SQLSTATE LF001, whatever
the driver (psycopg 3, psycopg2, asyncpg).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy
from sqlalchemy import exc, text

from ._fence import (
    INSTALL_LOCK_SQL,
    STALE_TOKEN_SQLSTATE,
    fence_params,
    fenced_begin_params,
    last_tick_params,
    sql_text,
    stale_token,
    statements,
    tick_params,
)
from ._term import StaleToken, Term

__all__ = ["StaleToken", "aclaim_tick", "afence", "afenced_transaction", "afinish_tick", "claim_tick", "fence",
           "fenced_transaction", "finish_tick", "install", "last_tick"]

Executor = Any  # sqlalchemy Connection or orm Session (both have .execute and .begin)
SQL = statements(lambda name: f":{name}")
FENCED_BEGIN = text(SQL.fenced_begin)
FENCE = text(SQL.fence)
CLAIM_TICK = text(SQL.claim_tick)
FINISH_TICK = text(SQL.finish_tick)
LAST_TICK = text(SQL.last_tick)


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of the driver's error SQLAlchemy wrapped, whatever the driver: psycopg 3 and
    asyncpg say `sqlstate`, psycopg2 `pgcode`; else LF001 if its message names it."""
    original = getattr(error, "orig", None)
    for name in ("sqlstate", "pgcode"):
        state = getattr(original, name, None)
        if isinstance(state, str):
            return state
    return STALE_TOKEN_SQLSTATE if original is not None and STALE_TOKEN_SQLSTATE in str(original) else None


@contextlib.contextmanager
def _stale_token_as_exception() -> Iterator[None]:
    try:
        yield
    except exc.DBAPIError as error:
        refused = stale_token(_sqlstate(error), error.orig)
        if refused is not None:
            raise refused from error
        raise


def install(engine: sqlalchemy.Engine) -> None:
    """Runs sql/lease_fence.sql through the driver's own cursor (it holds `%` that a parameter
    style would misread), under an advisory lock (one installer at a time)."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            cursor.execute(INSTALL_LOCK_SQL)
            cursor.execute(sql_text())
            raw.commit()
        finally:
            cursor.close()


def fence(executor: Executor, term: Term | int, scope: str | None = None) -> int:
    params = fence_params(term, scope)
    with _stale_token_as_exception():
        executor.execute(FENCE, params)
    return params["token"]


def claim_tick(executor: Executor, term: Term | int, job: str, scheduled_at: datetime,
               scope: str | None = None) -> bool:
    with _stale_token_as_exception():
        return bool(executor.execute(CLAIM_TICK, tick_params(term, job, scheduled_at, scope)).scalar())


def finish_tick(executor: Executor, term: Term | int, job: str, scheduled_at: datetime,
                scope: str | None = None) -> bool:
    return bool(executor.execute(FINISH_TICK, tick_params(term, job, scheduled_at, scope)).scalar())


def last_tick(executor: Executor, scope: str, job: str) -> datetime | None:
    return executor.execute(LAST_TICK, last_tick_params(scope, job)).scalar()


@contextlib.contextmanager
def fenced_transaction(executor: Executor, term: Term | int, scope: str | None = None,
                       idle_timeout_s: float | None = None) -> Iterator[Executor]:
    """`executor.begin()`, then its timeouts (SET LOCAL) below the term's remaining time (or
    `idle_timeout_s`), then the fence; commits at the end of the block. What each timeout bounds:
    `lease_sidecar_client.psycopg.fenced_transaction`. Not inside `begin_nested()`: a rollback to a
    savepoint taken before the fence undoes it, row lock included."""
    params = fenced_begin_params(term, scope, idle_timeout_s)
    with executor.begin():
        with _stale_token_as_exception():  # one round trip: the timeouts (SET LOCAL) and the fence
            executor.execute(FENCED_BEGIN, params)
        yield executor


# ---------------------------------------------------------------- asyncio (AsyncConnection / AsyncSession)


async def afence(executor: Executor, term: Term | int, scope: str | None = None) -> int:
    params = fence_params(term, scope)
    with _stale_token_as_exception():
        await executor.execute(FENCE, params)
    return params["token"]


async def aclaim_tick(executor: Executor, term: Term | int, job: str, scheduled_at: datetime,
                      scope: str | None = None) -> bool:
    with _stale_token_as_exception():
        result = await executor.execute(CLAIM_TICK, tick_params(term, job, scheduled_at, scope))
    return bool(result.scalar())


async def afinish_tick(executor: Executor, term: Term | int, job: str, scheduled_at: datetime,
                       scope: str | None = None) -> bool:
    result = await executor.execute(FINISH_TICK, tick_params(term, job, scheduled_at, scope))
    return bool(result.scalar())


@contextlib.asynccontextmanager
async def afenced_transaction(executor: Executor, term: Term | int, scope: str | None = None,
                              idle_timeout_s: float | None = None) -> AsyncIterator[Executor]:
    params = fenced_begin_params(term, scope, idle_timeout_s)
    async with executor.begin():
        with _stale_token_as_exception():
            await executor.execute(FENCED_BEGIN, params)
        yield executor
