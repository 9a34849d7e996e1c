"""The app's side of lease-sidecar: the standard library alone at its core.

    from lease_sidecar_client import Sidecar, current_term

    sidecar = Sidecar()                         # http://127.0.0.1:4040, the sidecar in this pod
    with sidecar.leading() as lead:             # waits for a term; lead.check() raises TermEnded
        lead.check()
        write(item, token=lead.term.fencing_token)

A *term* is one leader's tenure: identity, `lease` ("namespace/name", the scope a storage fence
checks), fencing token, and its deadline on the monotonic clock (`Term`). Integrations import their
extra lazily: `lease_sidecar_client.psycopg`, `.sqlalchemy`, `.redis` (fences, tick ledger),
`.ticks` (schedules from a shared anchor), `.loop` (a plain interval/cron loop), `.aio` (asyncio),
`.apscheduler`, `.celery`. The SQL of the fence and ledger ships as `sql/lease_fence.sql`.
"""

from __future__ import annotations

from ._blocking import (
    DEFAULT_URL,
    Heartbeats,
    Sidecar,
    changes,
    heartbeat,
    is_leader,
    remaining_s,
    resign,
    status,
    still_valid,
    wait_until_leader,
)
from ._leading import Leading
from ._term import StaleToken, Status, Term, TermEnded, bind_term, current_term, status_deadline_monotonic

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "Heartbeats",
    "Leading",
    "Sidecar",
    "StaleToken",
    "Status",
    "Term",
    "TermEnded",
    "__version__",
    "bind_term",
    "changes",
    "current_term",
    "heartbeat",
    "is_leader",
    "remaining_s",
    "resign",
    "sql_path",
    "status",
    "status_deadline_monotonic",
    "still_valid",
    "wait_until_leader",
]


def sql_path() -> str:
    """The path of the shipped `lease_fence.sql` (package data)."""
    from importlib import resources

    return str(resources.files(__package__).joinpath("sql", "lease_fence.sql"))
