"""What the PostgreSQL helpers share, standard library only (psycopg and SQLAlchemy users alike)."""

from __future__ import annotations

import math
from collections.abc import Callable

from . import sql_path
from ._term import Term, TermEnded

STALE_TOKEN_SQLSTATE = "LF001"
INSTALL_LOCK_KEY = 0x1EA5E_FE4CE  # one installer at a time (CREATE ... IF NOT EXISTS races otherwise)
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
    scope, token = scope_and_token(term, scope)
    return {"timeout_ms": timeout_ms, "scope": scope, "token": token}
