"""What the PostgreSQL helpers share, standard library only (psycopg and SQLAlchemy users alike)."""

from __future__ import annotations

import math

from . import sql_path
from ._term import Term, TermEnded

STALE_TOKEN_SQLSTATE = "LF001"
INSTALL_LOCK_KEY = 0x1EA5E_FE4CE  # one installer at a time (CREATE ... IF NOT EXISTS races otherwise)
MIN_IDLE_TIMEOUT_MS = 1  # 0 would switch the timeout off
IDLE_TIMEOUT_SHARE = 0.9
"""Of the term's remaining time, the share a fenced transaction may sit idle: below the TTL, so the
server kills a paused writer's transaction before the next term could have started writing."""


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
    """The idle_in_transaction_session_timeout of a fenced transaction: `idle_timeout_s` if given,
    else `IDLE_TIMEOUT_SHARE` of the term's remaining time. TermEnded if the term has no time left."""
    if idle_timeout_s is None:
        if not isinstance(term, Term):
            raise ValueError("idle_timeout_s: required with a bare token (no term to take it from)")
        left = term.remaining_s()
        if left <= 0:
            raise TermEnded("deadline reached")
        idle_timeout_s = left * IDLE_TIMEOUT_SHARE
    if not idle_timeout_s > 0 or not math.isfinite(idle_timeout_s):
        raise ValueError(f"idle_timeout_s: must be a finite number > 0, not {idle_timeout_s!r}")
    return max(MIN_IDLE_TIMEOUT_MS, math.floor(idle_timeout_s * 1000))


