"""The async driver and the seed's verbs over the in-memory backend, on a fake clock: no sleeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sidecar.core.config import ElectionConfig
from sidecar.core.election import BeatRole, Elector, Moment
from sidecar.engine.heartbeat import BeatHeartbeat
from sidecar.engine.memory_lock import InMemoryLockBackend
from sidecar.engine.status import StatusBoard

CONFIG = ElectionConfig(lease_ttl_s=10, renewal_interval_s=2, renew_deadline_s=6, heartbeat_interval_s=1,
                        heartbeat_ttl_s=3, failover_timeout_s=20)


class FakeClock:
    def __init__(self) -> None:
        self.mono = 1000.0

    def now(self) -> Moment:
        return Moment(self.mono, datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.mono))

    def advance(self, seconds: float) -> None:
        self.mono += seconds


def candidate(identity: str, backend: InMemoryLockBackend, clock: FakeClock) -> BeatHeartbeat:
    elector = Elector(identity, CONFIG)
    return BeatHeartbeat(elector, backend, StatusBoard(elector, clock, backend.key, 3), clock)


async def test_seed_verbs_drive_a_whole_election() -> None:
    clock, backend = FakeClock(), InMemoryLockBackend()
    a, b = candidate("a", backend, clock), candidate("b", backend, clock)
    assert await a.try_become_leader() is True
    assert await b.try_become_leader() is False
    assert b.role is BeatRole.STANDBY and await b.check_leader_health() is True

    clock.advance(2)
    assert await a.renew_lease() is True
    assert a.elector.stats.lease_renewals == 1

    # The API goes away: renewals fail and the leader steps down at its deadline, not later.
    backend.unavailable = True
    clock.advance(2)
    assert await a.renew_lease() is True  # failed, but still within the deadline (2 + 6 > 4)
    clock.advance(4)
    assert await a.renew_lease() is False
    assert a.board.snapshot()["is_leader"] is False
    assert a.elector.stats.lease_renewal_failures >= 2

    # Back again: b still waits for expiry as *it* observed it (its last observation at t=0 + 10).
    backend.unavailable = False
    assert await b.try_become_leader() is False
    clock.advance(2)
    assert await a.try_become_leader() is True  # a's own record: a new term at once
    assert a.board.snapshot()["fencing_token"] == 2


async def test_shutdown_releases_and_the_standby_takes_over_at_once() -> None:
    clock, backend = FakeClock(), InMemoryLockBackend()
    a, b = candidate("a", backend, clock), candidate("b", backend, clock)
    assert await a.try_become_leader() is True
    await b.tick()
    await a.shutdown()
    assert a.role is BeatRole.UNKNOWN
    released = (await backend.get(1)).record
    assert released.holder == "" and released.duration_s == 1
    assert await b.try_become_leader() is True
    assert b.elector.stats.failovers_detected == 1
    assert b.board.snapshot()["fencing_token"] == 2


async def test_versions_and_waiters_follow_role_changes() -> None:
    clock, backend = FakeClock(), InMemoryLockBackend()
    a = candidate("a", backend, clock)
    before = a.board.snapshot()["version"]
    await a.try_become_leader()
    after = await a.board.wait_for_change(before, 0.01)
    assert after["version"] > before and after["is_leader"] is True
    same = await a.board.wait_for_change(after["version"], 0.01)
    assert same["version"] == after["version"]
