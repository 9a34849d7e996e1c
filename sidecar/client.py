"""The app's client, kept here for imports written before it moved: it is the distribution
`lease-sidecar-client` (client/ in this repository, import `lease_sidecar_client`), standard library
only at its core. Every name this module had still works:

    from sidecar.client import LeaderClient          # asyncio (now stdlib streams: no aiohttp needed)
    async with LeaderClient() as leader:
        status = await leader.wait_until_leader()

    from sidecar import client                       # blocking, stdlib only
    if client.is_leader(): ...
    client.heartbeat(schedule_count=12, next_due_task="cleanup")   # never raises
    client.resign()
    client.remaining_s(status), client.still_valid(status)           # the deadline, monotonic clock

New code imports `lease_sidecar_client` (Term, Sidecar, leading(), the fences and the tick ledger).

The distribution lease-sidecar does not depend on lease-sidecar-client: the sidecar never imports
this module, and its image does not carry the client. An app that imports this module installs
lease-sidecar-client beside it; without it, the import fails with an ImportError that says so.
"""

from __future__ import annotations

try:
    import lease_sidecar_client  # noqa: F401  (only to tell a missing distribution from other errors)
except ModuleNotFoundError as error:
    if error.name != "lease_sidecar_client":
        raise
    raise ImportError(
        "sidecar.client re-exports the app's client library, the distribution lease-sidecar-client, which "
        "is not installed: pip install lease-sidecar-client (from a checkout of lease-sidecar: pip install "
        "./client), then import lease_sidecar_client", name=__name__) from error

from lease_sidecar_client import (
    DEFAULT_URL,
    Heartbeats,
    Status,
    changes,
    heartbeat,
    is_leader,
    remaining_s,
    resign,
    status,
    still_valid,
    wait_until_leader,
)
from lease_sidecar_client._blocking import LONG_POLL_S, RETRY_S
from lease_sidecar_client.aio import LeaderClient

__all__ = ["DEFAULT_URL", "LONG_POLL_S", "RETRY_S", "Heartbeats", "LeaderClient", "Status", "changes",
           "heartbeat", "is_leader", "remaining_s", "resign", "status", "still_valid", "wait_until_leader"]
