"""Issue 17 item 8 on the real control plane: a new watch whose list is overtaken by one of the
sidecar's own writes must not leave a stale view.

The race, made deterministic: the watch's list is held back until the candidate's own write has
landed and been taken in, then served (so it already shows that write) and delivered. The
Elector drops a list that a write of ours overtook; the watch that follows starts after the
write and never delivers it, so before the fix the Elector waited for that write's echo and
ignored every later event: a hand-over request written to the Lease was noticed only at the next
renewal (10 s here). With the fix the dropped list is replaced by a read at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from kubernetes_asyncio import client, config

from sidecar.core.clock import SystemClock
from sidecar.core.config import ElectionConfig
from sidecar.core.election import BeatRole, Elector
from sidecar.core.lock import Versioned, WatchEvent
from sidecar.core.record import HANDOVER_ANNOTATION, LeaseRecord
from sidecar.engine.heartbeat import BeatHeartbeat
from sidecar.engine.status import StatusBoard
from sidecar.kube.lease_lock import LeaseLockBackend
from tests.cluster.blackhole import BlackHoleProxy
from tests.cluster.kube import kubectl

RENEWAL_S = 10.0
CONFIG = ElectionConfig(lease_ttl_s=30, renewal_interval_s=RENEWAL_S, renew_deadline_s=20, heartbeat_interval_s=5,
                        heartbeat_ttl_s=15, failover_timeout_s=45, request_timeout_s=5)


class ListAfterOwnWrite:
    """The real Lease store, except that (while `holding`) a new watch's list waits until one of
    our writes has landed after the watch began (and the driver has taken it in), so the list
    shows that write and arrives after it."""

    def __init__(self, inner: LeaseLockBackend, holding: bool = True) -> None:
        self.inner = inner
        self.key = inner.key
        self.holding = holding
        self.written = asyncio.Event()
        self.lists_held = 0
        self.list_served = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # anything else the store offers, as it is

    async def get(self, timeout_s: float) -> Versioned | None:
        return await self.inner.get(timeout_s)

    async def create(self, record: LeaseRecord, timeout_s: float) -> Versioned:
        stored = await self.inner.create(record, timeout_s)
        self.written.set()
        return stored

    async def update(self, record: LeaseRecord, expected_version: str, timeout_s: float) -> Versioned:
        stored = await self.inner.update(record, expected_version, timeout_s)
        self.written.set()
        return stored

    async def watch(self, idle_timeout_s: float, request_timeout_s: float) -> AsyncIterator[WatchEvent]:
        first = True
        if self.holding:
            self.lists_held += 1
            self.written.clear()
            await self.written.wait()
            self.list_served.set()
        async for event in self.inner.watch(idle_timeout_s, request_timeout_s):
            if first:
                for _ in range(3):
                    await asyncio.sleep(0)  # the driver's write_succeeded runs before this list arrives
                first = False
            yield event


def released_lease(namespace: str) -> None:
    """A Lease in client-go's release shape: the candidate takes it at once, no fence to wait."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kubectl("apply", "-n", namespace, "-f", "-", stdin=(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: relist}\n"
        f"spec: {{holderIdentity: '', leaseDurationSeconds: 1, acquireTime: '{now}', renewTime: '{now}'}}\n"))


async def test_a_list_overtaken_by_our_own_write_does_not_blind_the_watch(kubeconfig: Path, namespace: str) -> None:
    released_lease(namespace)
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        backend = ListAfterOwnWrite(LeaseLockBackend(api_client, namespace, "relist"))
        clock = SystemClock()
        elector = Elector("relist-a", CONFIG)
        board = StatusBoard(elector, clock, f"{namespace}/relist", 15)
        heartbeat = BeatHeartbeat(elector, backend, board, clock)
        changed = asyncio.Event()
        board.subscribe(lambda _snapshot: changed.set())

        async def until(leading: bool) -> None:
            while (heartbeat.role is BeatRole.LEADER) != leading:
                changed.clear()
                await changed.wait()

        tasks = [asyncio.create_task(heartbeat.elect()), asyncio.create_task(heartbeat.watch_lease())]
        try:
            async with asyncio.timeout(20):
                await until(leading=True)
            assert backend.lists_held == 1
            await asyncio.sleep(1.0)  # the held list has been served and delivered (and dropped)

            # A hand-over request arrives through the Lease (as `lease-sidecar handover` writes it).
            asked = time.monotonic()
            kubectl("annotate", "lease", "relist", "-n", namespace, f"{HANDOVER_ANNOTATION}=relist-b")
            async with asyncio.timeout(RENEWAL_S + 10):
                await until(leading=False)
            noticed_s = time.monotonic() - asked
            # Through the watch this takes milliseconds; a blinded watch leaves it to the next
            # renewal, up to RENEWAL_S later.
            assert noticed_s < RENEWAL_S / 2, f"the hand-over request was noticed only after {noticed_s:.1f}s"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


OUTAGE_CONFIG = ElectionConfig(lease_ttl_s=12, renewal_interval_s=RENEWAL_S, renew_deadline_s=11,
                               heartbeat_interval_s=5, heartbeat_ttl_s=15, failover_timeout_s=13)
"""A watch request lasts 13 s; a stream silent 5 s beyond that is broken: an outage of 20 s
breaks the watch (and ends the term at its 11 s deadline)."""


async def test_a_relist_after_an_outage_while_our_write_lands_does_not_blind_the_watch(
        api_path: BlackHoleProxy, namespace: str) -> None:
    """The same race after an API outage (the test's own proxy black-holes the sidecar's
    traffic): the broken watch lists again while the candidate's own write lands."""
    released_lease(namespace)
    assert api_path.kubeconfig_path is not None
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(api_path.kubeconfig_path), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        backend = ListAfterOwnWrite(LeaseLockBackend(api_client, namespace, "relist"), holding=False)
        clock = SystemClock()
        elector = Elector("relist-a", OUTAGE_CONFIG)
        board = StatusBoard(elector, clock, f"{namespace}/relist", 15)
        watch_restarted = asyncio.Event()
        heartbeat = BeatHeartbeat(elector, backend, board, clock, watch_restarted.set)
        changed = asyncio.Event()
        board.subscribe(lambda _snapshot: changed.set())

        async def until(leading: bool) -> None:
            while (heartbeat.role is BeatRole.LEADER) != leading:
                changed.clear()
                await changed.wait()

        tasks = [asyncio.create_task(heartbeat.elect()), asyncio.create_task(heartbeat.watch_lease())]
        try:
            async with asyncio.timeout(20):
                await until(leading=True)
            backend.holding = True  # from now on, each new watch's list is overtaken by our write
            api_path.cut()
            try:
                async with asyncio.timeout(40):
                    await until(leading=False)  # the renew deadline passes
                    await watch_restarted.wait()  # the silent watch is given up
            finally:
                api_path.heal()
            # Our own record comes back: the candidate takes it again at once (rule O), and that
            # write overtakes the relist.
            async with asyncio.timeout(30):
                await until(leading=True)
            # The watch may still sit in its back-off when the elect loop has already taken the
            # Lease again: its list is then served after our next write (a renewal at most
            # RENEWAL_S later), the same race.
            async with asyncio.timeout(RENEWAL_S + 10):
                await backend.list_served.wait()
            await asyncio.sleep(1.0)

            asked = time.monotonic()
            kubectl("annotate", "lease", "relist", "-n", namespace, f"{HANDOVER_ANNOTATION}=relist-b")
            async with asyncio.timeout(RENEWAL_S + 10):
                await until(leading=False)
            noticed_s = time.monotonic() - asked
            assert noticed_s < RENEWAL_S / 2, f"the hand-over request was noticed only after {noticed_s:.1f}s"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
