"""The async driver and the seed's verbs over the in-memory backend, on a fake clock: no sleeps."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from sidecar.core.config import ElectionConfig
from sidecar.core.election import BeatRole, Elector, Moment
from sidecar.core.lock import Conflict
from sidecar.core.record import LeaseRecord
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
    assert await a.try_become_leader() is False  # no Lease yet: created one TTL after first seen absent
    clock.advance(CONFIG.lease_ttl_s)
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
    assert a.board.snapshot()["fencing_token"] > 1  # 1 + the version replaced (election.py, L2)


async def test_shutdown_releases_and_the_standby_takes_over_at_once() -> None:
    clock, backend = FakeClock(), InMemoryLockBackend()
    a, b = candidate("a", backend, clock), candidate("b", backend, clock)
    await a.tick()
    clock.advance(CONFIG.lease_ttl_s)
    assert await a.try_become_leader() is True
    await b.tick()
    a.elector.gate.resign(clock.mono, 0)  # the app's SIGTERM handler: it gave its deadline up
    await a.shutdown()
    assert a.role is BeatRole.UNKNOWN
    released = (await backend.get(1)).record
    assert released.holder == "" and released.duration_s == 1
    assert await b.try_become_leader() is True
    assert b.elector.stats.failovers_detected == 1
    assert b.board.snapshot()["fencing_token"] > 1


async def test_shutdown_holds_the_release_until_the_deadline_the_app_was_told(
        caplog: pytest.LogCaptureFixture) -> None:
    # election.py P2: the board published a deadline (status.json, /leader); the app did not resign.
    caplog.set_level(logging.INFO, logger="lease_sidecar")
    clock, backend = FakeClock(), InMemoryLockBackend()
    a, b = candidate("a", backend, clock), candidate("b", backend, clock)
    await a.tick()
    clock.advance(CONFIG.lease_ttl_s)
    assert await a.try_become_leader() is True
    told_until = a.board.snapshot()["valid_until_monotonic"]
    await b.tick()
    clock.advance(1)
    shutting_down = asyncio.create_task(a.shutdown())
    for _ in range(20):  # the elect loop runs to its wait (the fake clock stands still meanwhile)
        await asyncio.sleep(0)
    assert not shutting_down.done() and a.role is BeatRole.STANDBY
    assert (await backend.get(1)).record.holder == "a"
    assert [r.wait_s for r in caplog.records if getattr(r, "event", None) == "release_held"] == [5.0]
    clock.advance(told_until - clock.mono)
    a.wake()
    await asyncio.wait_for(shutting_down, 5)
    assert (await backend.get(1)).record.holder == ""
    assert await b.try_become_leader() is True


async def test_versions_and_waiters_follow_role_changes() -> None:
    clock, backend = FakeClock(), InMemoryLockBackend()
    a = candidate("a", backend, clock)
    await a.tick()
    clock.advance(CONFIG.lease_ttl_s)
    before = a.board.snapshot()["version"]
    await a.try_become_leader()
    after = await a.board.wait_for_change(before, 0.01)
    assert after["version"] > before and after["is_leader"] is True
    same = await a.board.wait_for_change(after["version"], 0.01)
    assert same["version"] == after["version"]


def step_down_reasons(caplog: pytest.LogCaptureFixture) -> list[tuple[int | None, str]]:
    return [(r.term, r.reason) for r in caplog.records
            if getattr(r, "event", None) == "role_changed" and r.from_role == "leader"]


async def test_step_down_log_gives_each_terms_own_true_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lease_sidecar")
    clock, backend = FakeClock(), InMemoryLockBackend()
    a = candidate("a", backend, clock)
    await a.tick()
    clock.advance(CONFIG.lease_ttl_s)
    assert await a.try_become_leader() is True
    await backend.delete()
    assert await a.tick() is BeatRole.STANDBY
    clock.advance(CONFIG.lease_ttl_s)
    assert await a.try_become_leader() is True  # term 2
    # Paused past its deadline; meanwhile someone else took the lease. Waking, it sees the takeover
    # first, but the deadline is what ended its term.
    clock.advance(CONFIG.renew_deadline + 5)
    current = await backend.get(1)
    await backend.update(LeaseRecord("b", 10, fencing_token=3), current.version, 1)
    assert await a.tick() is BeatRole.STANDBY
    clock.advance(CONFIG.lease_ttl_s)
    assert await a.try_become_leader() is True  # term 4
    clock.advance(CONFIG.renew_deadline + 1)  # paused again, then SIGTERM: not "shutting down"
    await a.shutdown()
    reasons = step_down_reasons(caplog)
    assert [reason for _, reason in reasons] == ["lease deleted", "renew deadline passed", "renew deadline passed"]
    assert [token for token, _ in reasons] == sorted({token for token, _ in reasons})


class ConflictingReads(InMemoryLockBackend):
    """A backend breaking the contract: its reads say "conflict"."""

    async def get(self, timeout_s: float) -> None:
        raise Conflict("a read cannot conflict")


async def test_a_conflicting_read_counts_as_a_failed_call(caplog: pytest.LogCaptureFixture) -> None:
    # Handled by an explicit check, not an assert: the image runs with PYTHONOPTIMIZE=2.
    clock, backend = FakeClock(), ConflictingReads()
    a = candidate("a", backend, clock)
    with caplog.at_level(logging.ERROR, logger="lease_sidecar"):
        assert await a.try_become_leader() is False
    assert [r for r in caplog.records if getattr(r, "event", None) == "read_failed"]
    assert a.board.snapshot()["is_leader"] is False


async def test_the_app_ttl_arms_the_step_down_timer_like_the_renew_deadline() -> None:
    # Issue 17 item 9: every channel hears standby at the moment the app's TTL lapses, even
    # while the elect loop is busy with a call (the timer publishes, whatever the loop does).
    from sidecar.core.liveness import AppLiveness

    clock, backend = FakeClock(), InMemoryLockBackend()
    gate = AppLiveness(ttl_s=2.5)
    elector = Elector("a", CONFIG, gate=gate)
    board = StatusBoard(elector, clock, backend.key, 3, app=gate)
    heard: list[str] = []
    board.subscribe(lambda snapshot: heard.append(snapshot["role"]))
    a = BeatHeartbeat(elector, backend, board, clock)
    await a.tick()
    clock.advance(CONFIG.lease_ttl_s)
    gate.beat(clock.mono, clock.now().wall)
    assert await a.try_become_leader() is True
    assert a._deadline_armed_for == clock.mono + 2.5  # the app's moment, before the renew deadline (6)
    clock.advance(2.5)
    a._on_deadline()  # what the loop's timer calls at that moment
    assert heard[-1] == "standby"
    gate.beat(clock.mono + 0.1, clock.now().wall)  # late
    assert board.snapshot()["role"] == "standby"
