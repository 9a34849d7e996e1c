"""Keyed locks' driver (engine/keyed_locks.py) over an in-memory lock-lease source on a fake clock:
what it does when its watch breaks and resumes, and what it publishes and releases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.election import Elector
from sidecar.core.keyed_locks import LockLimits, lease_name_for, lock_election_config
from sidecar.core.liveness import AppLiveness
from sidecar.core.record import LeaseRecord
from sidecar.engine.app_link import AppLink
from sidecar.engine.keyed_locks import KeyedLocks, LockRefused
from sidecar.engine.status import StatusBoard
from sidecar.publish.lock_metrics import LockMetrics
from sidecar.wiring.lock_parts import LockParts
from tests.unit.fake_lock_leases import FakeClock, FakeLockLeases, until

MAX_TTL_S = 30.0
CONFIG = lock_election_config(MAX_TTL_S, None)
LIMITS = LockLimits(max_keys=10, rate_per_s=100.0, burst=100, gc_after_s=600.0)
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def running() -> AsyncIterator[tuple[KeyedLocks, FakeLockLeases, FakeClock]]:
    """A sidecar's keyed locks with its watch running and listed."""
    leases, clock = FakeLockLeases(), FakeClock()
    locks = KeyedLocks(leases, clock, "pod-a", CONFIG, LIMITS)
    watch = asyncio.create_task(locks.watch_forever())
    await until(lambda: leases.watches_open == 1)
    yield locks, leases, clock
    watch.cancel()
    for entry in locks.entries.values():
        if entry.task is not None:
            entry.task.cancel()


def other_pods_hold(token: int) -> LeaseRecord:
    return LeaseRecord(holder="pod-b/aaaaaaaaaaaaaaaa", duration_s=int(MAX_TTL_S), acquire_time=EPOCH,
                       renew_time=EPOCH, fencing_token=token)


async def test_a_broken_watch_stops_taking_absent_keys_at_once_until_the_resumed_watch_is_max_ttl_old(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, leases, clock = running
    clock.advance(MAX_TTL_S + 10)  # the watch is older than --lock-max-ttl: K3 takes absent keys at once
    assert (await locks.acquire("before-the-break", 10.0, 0.0)).fencing_token > 0

    leases.break_watch()
    await until(lambda: leases.watches_broken == 1)
    with pytest.raises(LockRefused) as refused:  # no stream now: a read's absence waits a full TTL (F3)
        await locks.acquire("during-the-break", 10.0, 0.0)
    assert refused.value.status == 409 and refused.value.retry_after_s == pytest.approx(MAX_TTL_S)

    clock.advance(5)
    leases.heal_watch()
    await until(lambda: leases.watches_open == 1)  # resumed from its last version, not listed again
    resumed_mono = clock.mono
    clock.advance(1)
    with pytest.raises(LockRefused) as refused:  # judged from the resumed watch, not the first list
        await locks.acquire("after-the-break", 10.0, 0.0)
    assert refused.value.retry_after_s == pytest.approx(resumed_mono + MAX_TTL_S - clock.mono)
    clock.advance(MAX_TTL_S)
    assert (await locks.acquire("after-the-break", 10.0, 0.0)).fencing_token > 0


async def test_a_key_seen_absent_before_the_watch_broke_is_read_again_and_its_token_never_goes_back(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, leases, clock = running
    with pytest.raises(LockRefused):  # the young watch fences the key (K3): now known absent
        await locks.acquire("nightly", 10.0, 0.0)
    clock.advance(MAX_TTL_S + 10)

    leases.break_watch()
    await until(lambda: leases.watches_broken == 1)
    # Unseen by this sidecar: the cluster writes on, another pod takes the key (its token is the
    # version it replaced + 1, election.py L2), releases it, and the released Lease is collected.
    leases.others_write(5000)
    leases.put("nightly", other_pods_hold(token=leases.revision + 1))
    leases.put("nightly", LeaseRecord(holder="", duration_s=1, acquire_time=EPOCH, renew_time=EPOCH,
                                      fencing_token=5000))
    leases.remove("nightly")

    hold = await locks.acquire("nightly", 10.0, 0.0)
    assert hold.fencing_token > 5100


async def test_a_new_key_takes_a_token_above_the_version_of_the_list_that_showed_it_absent(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, leases, clock = running
    listed_at = leases.revision
    clock.advance(MAX_TTL_S + 10)
    hold = await locks.acquire("first-time", 10.0, 0.0)
    assert hold.fencing_token > listed_at  # election.py L2: 1 + the store's version at the absence


async def test_a_deleted_and_recreated_keys_token_is_above_the_deletions_version(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, leases, clock = running
    clock.advance(MAX_TTL_S + 10)
    leases.put("report", other_pods_hold(token=leases.revision + 1))
    await until(lambda: leases.name_of("report") in locks.entries)
    leases.remove("report")  # by hand, under its live holder: others wait a TTL from the sight (F2)
    deleted_at = leases.revision
    await until(lambda: locks.entries[leases.name_of("report")].elector.observed_record is None)
    clock.advance(MAX_TTL_S + 1)
    hold = await locks.acquire("report", 10.0, 0.0)
    assert hold.fencing_token > deleted_at


def released(leases: FakeLockLeases, key: str) -> bool:
    return any(name == leases.name_of(key) and record.holder == "" for name, record in leases.writes)


async def wake_drivers(locks: KeyedLocks) -> None:
    """The fake clock moved: every key's driver decides again now (as its timer would have fired)."""
    for entry in locks.entries.values():
        entry.wake.set()
    await asyncio.sleep(0.05)


async def test_the_deadline_told_to_the_owner_ends_no_later_than_the_apps_liveness(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, leases, clock = running
    app = AppLiveness(ttl_s=2.0)
    locks.app = app
    clock.advance(MAX_TTL_S + 10)
    app.beat(clock.mono, EPOCH)
    hold = await locks.acquire("migrate", 10.0, 0.0)  # ttl 10 s, renew deadline 20 s, app TTL 2 s
    assert hold.valid_until_monotonic <= clock.mono + 2.0
    clock.advance(1.0)
    app.beat(clock.mono, EPOCH)
    renewed = locks.renew_hold("migrate", hold.owner)
    assert renewed.valid_until_monotonic <= clock.mono + 2.0
    clock.advance(2.0)  # the app falls silent: the lock is released at its lapse, no sooner than told
    await wake_drivers(locks)
    await until(lambda: released(leases, "migrate"))
    assert clock.mono >= renewed.valid_until_monotonic


async def test_sigterm_releases_a_lock_only_once_the_deadline_told_to_its_owner_passed(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, leases, clock = running
    clock.advance(MAX_TTL_S + 10)
    hold = await locks.acquire("report", 10.0, 0.0)
    told_until = locks.renew_hold("report", hold.owner).valid_until_monotonic
    clock.advance(1.0)
    await locks.close(timeout_s=0.2)  # the shutdown grace runs out before the owner's deadline
    assert not released(leases, "report")
    with pytest.raises(LockRefused) as refused:  # no renewal moves the deadline now
        locks.renew_hold("report", hold.owner)
    assert "shutting down" in refused.value.message
    clock.advance(told_until - clock.mono)
    await wake_drivers(locks)
    await until(lambda: released(leases, "report"))


async def test_an_owners_own_release_is_written_at_once(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, leases, clock = running
    clock.advance(MAX_TTL_S + 10)
    hold = await locks.acquire("report", 10.0, 0.0)
    assert await locks.release_hold("report", hold.owner)  # it stopped its work: nothing to wait for
    assert released(leases, "report")


async def test_a_hand_over_request_written_on_a_locks_lease_leaves_the_owner_holding_it(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, leases, clock = running
    clock.advance(MAX_TTL_S + 10)
    hold = await locks.acquire("report", 30.0, 0.0)
    record = leases.record("report")
    assert record is not None
    leases.put("report", replace(record, handover_to="pod-b/aaaaaaaaaaaaaaaa"))  # `lease-sidecar handover`
    entry = locks.entries[leases.name_of("report")]
    await until(lambda: entry.elector.observed_record is not None and entry.elector.observed_record.handover_to != "")
    await wake_drivers(locks)
    clock.advance(CONFIG.renewal_interval_s)  # the sidecar's renewal is due
    renewed = locks.renew_hold("report", hold.owner)  # the owner still holds it
    assert renewed.fencing_token == hold.fencing_token
    writes_before = len(leases.writes)
    await wake_drivers(locks)
    await until(lambda: len(leases.writes) > writes_before)
    assert not released(leases, "report")
    name, written = leases.writes[-1]
    assert name == leases.name_of("report") and written.holder == record.holder  # a renewal, not a release
    assert written.fencing_token == hold.fencing_token and written.successor == ""


def app_link(locks: KeyedLocks, app: AppLiveness, clock: FakeClock) -> AppLink:
    """The app's link as the sidecar wires it: its heartbeats and probes reach the keyed locks."""
    link = AppLink(app, StatusBoard(Elector("pod-a", CONFIG), clock, "default/work", 3, app), clock, lambda: None,
                   default_sit_out_s=5.0)
    LockParts(locks, LockMetrics(CollectorRegistry(), "default", "work", "locks-")).follow_app(link)
    return link


def driver_asleep(locks: KeyedLocks, key: str) -> bool:
    entry = locks.entries.get(lease_name_for("locks-", key))
    return entry is not None and entry.task is not None and not entry.wake.is_set()


@pytest.mark.parametrize("app_before", ["never heartbeated", "lapsed"])
async def test_an_acquisition_waiting_for_a_live_app_is_taken_at_its_heartbeat(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock], app_before: str) -> None:
    locks, leases, clock = running
    app = AppLiveness(ttl_s=2.0)
    locks.app = app
    link = app_link(locks, app, clock)
    clock.advance(MAX_TTL_S + 10)  # the watch is old: nothing but the app holds the key back
    if app_before == "lapsed":
        link.heartbeat()
        clock.advance(3.0)
    acquiring = asyncio.create_task(locks.acquire("nightly", 10.0, 120.0))  # ?wait=120s
    await until(lambda: driver_asleep(locks, "nightly"))
    await asyncio.sleep(0.05)
    assert not acquiring.done() and not leases.writes  # no key is taken while the app is not alive
    link.heartbeat()  # POST /heartbeat
    # Woken by the heartbeat, not at the end of its wait (which is 120 s of real time away: the
    # driver's timers run on the loop's clock).
    await until(acquiring.done)
    hold = acquiring.result()
    assert hold.fencing_token > 0 and hold.valid_until_monotonic <= clock.mono + 2.0


async def test_a_passing_probe_wakes_a_waiting_acquisition_too(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, _, clock = running
    app = AppLiveness(ttl_s=2.0)
    locks.app = app
    link = app_link(locks, app, clock)
    clock.advance(MAX_TTL_S + 10)
    acquiring = asyncio.create_task(locks.acquire("nightly", 10.0, 120.0))
    await until(lambda: driver_asleep(locks, "nightly"))
    answers = [(False, "connection refused"), (True, None)]
    taken_before_the_pass: list[bool] = []

    async def probe() -> tuple[bool, str | None]:
        if len(answers) == 1:
            taken_before_the_pass.append(acquiring.done())
        return answers.pop(0) if answers else (True, None)

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0.05)  # real time for the loop to run the woken driver

    probing = asyncio.create_task(link.probe_at_fixed_rate(probe, 1.0, sleep))
    try:
        await until(acquiring.done)
    finally:
        probing.cancel()
    assert taken_before_the_pass == [False]  # a failing probe is no sign of life
    assert acquiring.result().fencing_token > 0


async def test_a_try_acquire_while_the_app_is_not_alive_is_refused_at_once_saying_why(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, leases, clock = running
    locks.app = AppLiveness(ttl_s=2.0)  # --app-heartbeat-ttl, and no heartbeat yet
    clock.advance(MAX_TTL_S + 10)
    # Without a wait the answer must not sit out the request budget (two API timeouts, on the
    # loop's real clock) to say "not free yet": the bound here is far below that budget.
    async with asyncio.timeout(5.0):
        with pytest.raises(LockRefused) as refused:
            await locks.acquire("nightly", 10.0, 0.0)
    assert refused.value.status == 409 and "app is not alive" in refused.value.message
    assert not leases.writes


async def test_an_expired_watch_is_a_break_too_every_earlier_view_is_read_again(
        running: tuple[KeyedLocks, FakeLockLeases, FakeClock]) -> None:
    locks, leases, clock = running
    clock.advance(MAX_TTL_S + 10)
    assert (await locks.acquire("known", 10.0, 0.0)).fencing_token > 0
    entry = locks.entries[lease_name_for("locks-", "known")]
    told: list[bool] = []
    entry.elector.lost_sight = lambda: told.append(True)  # type: ignore[method-assign]
    leases.expire_watch()  # a 410: the version the watch resumed from was compacted away
    # K3: what was seen before the 410 may be stale, as after any break: it is read again.
    await until(lambda: bool(told))
