"""What the PostgreSQL helpers share, standard library only: the SQL they send, the parameters
they build, how they read the answers and map a stale token's error. `psycopg` and `sqlalchemy`,
each in a blocking and an asyncio flavour, are thin shells around it that only do the I/O (as
psycopg and redis-py keep their sync and async clients over one shared core)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import sql_path
from ._term import StaleToken, Term, TermEnded

STALE_TOKEN_SQLSTATE = "LF001"
INSTALL_LOCK_KEY = 0x1EA5E_FE4CE  # one installer at a time (CREATE ... IF NOT EXISTS races otherwise)
INSTALL_LOCK_SQL = f"SELECT pg_advisory_xact_lock({INSTALL_LOCK_KEY:d})"
MIN_TIMEOUT_MS = 1  # 0 would switch a timeout off
IDLE_TIMEOUT_SHARE = 0.9
"""Of the term's remaining time, the share a fenced transaction is given: below the TTL, so the
server ends a paused writer's transaction (and with it the fence's row lock, which the next term's
fence waits on) before the next term could have started writing. What the server bounds with it
depends on its version: see `fenced_begin_sql`."""
TRANSACTION_TIMEOUT_SERVER_VERSION_NUM = 170000
"""PostgreSQL 17 added `transaction_timeout`; older servers only have the idle timeout."""


def sql_text() -> str:
    with open(sql_path(), encoding="utf-8") as file:
        return file.read()


def scope_and_token(term: Term | int, scope: str | None) -> tuple[str, int]:
    if isinstance(term, Term):
        return (scope or term.lease), term.fencing_token
    if scope is None:
        raise ValueError("scope: required with a bare token (the lease 'namespace/name' that issued it)")
    return scope, int(term)


def idle_timeout_ms(term: Term | int, idle_timeout_s: float | None = None) -> int:
    """The timeouts of a fenced transaction, in ms: `idle_timeout_s` if given, else
    `IDLE_TIMEOUT_SHARE` of the term's remaining time. TermEnded if the term has no time left."""
    if idle_timeout_s is None:
        if not isinstance(term, Term):
            raise ValueError("idle_timeout_s: required with a bare token (no term to take it from)")
        left = term.remaining_s()
        if left <= 0:
            raise TermEnded("deadline reached")
        idle_timeout_s = left * IDLE_TIMEOUT_SHARE
    if not idle_timeout_s > 0 or not math.isfinite(idle_timeout_s):
        raise ValueError(f"idle_timeout_s: must be a finite number > 0, not {idle_timeout_s!r}")
    return max(MIN_TIMEOUT_MS, math.floor(idle_timeout_s * 1000))


def fenced_begin_sql(placeholder: Callable[[str], str]) -> str:
    """The first statement of a fenced transaction, one round trip: its timeouts, then the fence.
    `placeholder(name)` spells a named parameter in the driver's style; the parameters are
    `timeout_ms` (int), `scope` and `token` (see `fenced_begin_params`).

    set_config(..., true) is SET LOCAL: each timeout ends with the transaction.
    - `idle_in_transaction_session_timeout` (every version) ends the session when the transaction
      sits idle, waiting for the client's next statement, longer than the timeout: a writer paused
      between two statements (SIGSTOP, a GC, a VM stall). It does not count the time a statement
      runs, waits for a lock or sends its rows, so a transaction kept busy is not bounded by it.
    - `transaction_timeout` (PostgreSQL 17 and newer, found by server_version_num) ends the session
      when the rest of the transaction, from this statement to its commit, takes longer, whatever
      it does. PostgreSQL starts that timer only when none runs, and one runs from BEGIN when the
      session's or role's own `transaction_timeout` is set: a stricter one (1 ms up to ours) is
      left running, a looser one is stopped (set to 0) so that ours starts. CASE evaluates its
      branches in order, so the stop comes before the start and nothing of it runs on PostgreSQL 16
      or older, where the parameter does not exist."""
    timeout_ms = f"CAST({placeholder('timeout_ms')} AS bigint)"
    return (
        f"SELECT set_config('idle_in_transaction_session_timeout', CAST({timeout_ms} AS text), true),"
        f" CASE WHEN current_setting('server_version_num')::int < {TRANSACTION_TIMEOUT_SERVER_VERSION_NUM}"
        f" THEN NULL"
        # The setting reads as '0', '1500ms', '2s', '2min', ...: as an interval, in ms (pg_settings
        # has the number as such, but reading it builds every setting's row, 0.5 ms a time).
        f" WHEN (extract(epoch FROM current_setting('transaction_timeout')::interval) * 1000)::bigint"
        f" BETWEEN 1 AND {timeout_ms} THEN NULL"
        f" WHEN set_config('transaction_timeout', '0', true) IS NULL THEN NULL"
        f" ELSE set_config('transaction_timeout', CAST({timeout_ms} AS text), true) END,"
        f" lease_fence({placeholder('scope')}, {placeholder('token')})")


def fenced_begin_params(term: Term | int, scope: str | None, idle_timeout_s: float | None) -> dict[str, object]:
    """The parameters of `fenced_begin_sql`; TermEnded if the term has no time left."""
    timeout_ms = idle_timeout_ms(term, idle_timeout_s)
    return {"timeout_ms": timeout_ms, **fence_params(term, scope)}


Placeholder = Callable[[str], str]
"""Spells a named parameter in a driver's style: psycopg `%(name)s`, SQLAlchemy `:name`."""


@dataclass(frozen=True)
class Statements:
    """The helpers' SQL in one driver's parameter style; parameters as the `*_params` below."""

    fenced_begin: str
    fence: str
    claim_tick: str
    finish_tick: str
    last_tick: str
    unfinished_ticks: str
    unfinished_ticks_of_scope: str


def statements(placeholder: Placeholder) -> Statements:
    p = placeholder
    tick = f"{p('scope')}, {p('job')}, {p('scheduled_at')}, {p('token')}"
    unfinished = "SELECT scope, job, scheduled_at, token, claimed_at FROM lease_unfinished_ticks"
    return Statements(
        fenced_begin=fenced_begin_sql(placeholder),
        fence=f"SELECT lease_fence({p('scope')}, {p('token')})",
        claim_tick=f"SELECT lease_claim_tick({tick})",
        finish_tick=f"SELECT lease_finish_tick({tick})",
        last_tick=f"SELECT max(scheduled_at) FROM lease_tick_ledger WHERE scope = {p('scope')} AND job = {p('job')}",
        unfinished_ticks=f"{unfinished} ORDER BY scheduled_at",
        unfinished_ticks_of_scope=f"{unfinished} WHERE scope = {p('scope')} ORDER BY scheduled_at",
    )


def fence_params(term: Term | int, scope: str | None) -> dict[str, Any]:
    scope, token = scope_and_token(term, scope)
    return {"scope": scope, "token": token}


def tick_params(term: Term | int, job: str, scheduled_at: datetime, scope: str | None) -> dict[str, Any]:
    return {**fence_params(term, scope), "job": job, "scheduled_at": scheduled_at}


def last_tick_params(scope: str, job: str) -> dict[str, Any]:
    return {"scope": scope, "job": job}


def unfinished_ticks_query(sql: Statements, scope: str | None) -> tuple[str, dict[str, Any]]:
    if scope is None:
        return sql.unfinished_ticks, {}
    return sql.unfinished_ticks_of_scope, {"scope": scope}


def first_value(row: Sequence[Any] | None) -> Any:
    """The one column of a one-row answer (None for no row)."""
    return row[0] if row else None


def stale_token(sqlstate: str | None, message: object) -> StaleToken | None:
    """The StaleToken a driver's error stands for, or None if it is another error."""
    return StaleToken(str(message).strip()) if sqlstate == STALE_TOKEN_SQLSTATE else None
