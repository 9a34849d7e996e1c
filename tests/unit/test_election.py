"""The state machine on a fake clock: no sleeps, no mocks, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sidecar.core.config import ElectionConfig
from sidecar.core.election import BeatRole, Done, Elector, Moment, Read, Wait, Write
from sidecar.core.lock import Versioned
from sidecar.core.record import LeaseRecord

CONFIG = ElectionConfig(lease_ttl_s=10, renewal_interval_s=2, renew_deadline_s=6, heartbeat_interval_s=1,
                        heartbeat_ttl_s=3, failover_timeout_s=20)
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> Moment:
    # Wall time deliberately far off the monotonic clock: decisions must not use it.
    return Moment(seconds, EPOCH + timedelta(days=365, seconds=seconds))


class Store:
    """Just enough storage to close the loop in tests: versions count up."""

    def __init__(self) -> None:
        self.current: Versioned | None = None
        self.n = 0

    def put(self, record: LeaseRecord) -> Versioned:
        self.n += 1
        self.current = Versioned(record, str(self.n))
        return self.current

    def apply(self, elector: Elector, action: Write, start: Moment, end: Moment) -> None:
        current_version = self.current.version if self.current else None
        if action.expected_version != current_version:
            elector.write_conflicted(end, action)
            return
        elector.write_succeeded(end, action, start, self.put(action.record))


def lead(elector: Elector, store: Store, t: float) -> None:
    elector.observe(at(t), store.current)
    action = elector.next_action(at(t))
    assert isinstance(action, Write) and action.kind == "acquire"
    store.apply(elector, action, at(t), at(t))
    assert elector.view(t).role is BeatRole.LEADER


def test_unknown_until_first_observation_then_creates_absent_lease() -> None:
    elector = Elector("a", CONFIG)
    assert elector.view(0).role is BeatRole.UNKNOWN
    assert isinstance(elector.next_action(at(0)), Read)
    elector.observe(at(0), None)
    action = elector.next_action(at(0))
    assert isinstance(action, Write) and action.expected_version is None
    assert action.record.holder == "a" and action.record.fencing_token == 1
    assert action.record.duration_s == 10 and action.record.transitions == 0


def test_leader_renews_on_interval_and_steps_down_at_deadline_after_request_start() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    assert elector.next_action(at(1)) == Wait(2)
    renew = elector.next_action(at(2))
    assert isinstance(renew, Write) and renew.kind == "renew"
    # The renewal *started* at 2 and took 3 s: the deadline counts from 2, not 5.
    store.apply(elector, renew, at(2), at(5))
    assert elector.view(7.99).role is BeatRole.LEADER
    assert elector.view(8.0).role is BeatRole.STANDBY
    assert elector.stats.lease_renewals == 1


def test_failed_renewals_never_leave_a_stale_leader() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    t = 2.0
    while t < 20:
        action = elector.next_action(at(t))
        if isinstance(action, Wait):
            t = max(action.until_mono, t + 0.01)
            continue
        elector.call_failed(at(t + 0.5), action)
        t += 0.5
        assert elector.view(t).role is not BeatRole.LEADER or t < 6
    assert elector.view(6).role is BeatRole.STANDBY
    assert elector.stats.lease_renewal_failures >= 2
    assert elector.stats.leader_elections_lost == 1


def test_renew_timeout_is_capped_by_time_left() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    elector.call_failed(at(5.5), Read(1))
    action = elector.next_action(at(5.7))
    assert isinstance(action, Read) and action.timeout_s <= CONFIG.request_timeout
    elector.observe(at(5.7), store.current)
    renew = elector.next_action(at(5.7))
    assert isinstance(renew, Write) and renew.timeout_s == pytest.approx(0.3)


def test_standby_waits_for_expiry_by_its_own_observation_not_renew_time() -> None:
    store, elector = Store(), Elector("b", CONFIG)
    # renewTime says the lease expired a year ago; only local observation counts.
    old = EPOCH - timedelta(days=365)
    store.put(LeaseRecord("a", 10, old, old, 3, 7))
    elector.observe(at(100), store.current)
    assert elector.view(100).role is BeatRole.STANDBY
    assert elector.next_action(at(100)) == Wait(110)
    elector.observe(at(105), store.current)  # same record again: the clock does not restart
    assert elector.next_action(at(105)) == Wait(110)
    action = elector.next_action(at(110))
    assert isinstance(action, Write) and action.kind == "acquire"
    assert action.record.fencing_token == 8 and action.record.transitions == 4
    assert elector.stats.failovers_detected == 1


def test_any_change_restarts_the_expiry_clock() -> None:
    store, elector = Store(), Elector("b", CONFIG)
    store.put(LeaseRecord("a", 10, EPOCH, EPOCH, 0, 1))
    elector.observe(at(0), store.current)
    store.put(LeaseRecord("a", 10, EPOCH, EPOCH + timedelta(seconds=2), 0, 1))
    elector.observe(at(4), store.current)
    assert elector.next_action(at(9)) == Wait(14)


def test_release_is_taken_at_once_and_counts_a_transition() -> None:
    store, elector = Store(), Elector("b", CONFIG)
    store.put(LeaseRecord("", 1, EPOCH, EPOCH, 5, 9))
    elector.observe(at(0), store.current)
    action = elector.next_action(at(0))
    assert isinstance(action, Write) and action.kind == "acquire"
    assert action.record.transitions == 6 and action.record.fencing_token == 10


def test_conflict_never_overwrites_and_forces_a_fresh_read() -> None:
    store, a, b = Store(), Elector("a", CONFIG), Elector("b", CONFIG)
    a.observe(at(0), None)
    b.observe(at(0), None)
    write_a, write_b = a.next_action(at(0)), b.next_action(at(0))
    assert isinstance(write_a, Write) and isinstance(write_b, Write)
    store.apply(a, write_a, at(0), at(0))
    store.apply(b, write_b, at(0), at(0))
    assert a.view(0).role is BeatRole.LEADER and b.view(0).role is not BeatRole.LEADER
    assert isinstance(b.next_action(at(0)), Read)
    assert b.stats.leader_elections_lost == 1


def test_overwritten_holder_makes_the_leader_step_down_at_the_next_observation() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    store.put(LeaseRecord("intruder", 10, EPOCH, EPOCH, 1, 2))
    elector.observe(at(1), store.current)
    assert elector.view(1).role is BeatRole.STANDBY
    assert elector.last_loss_reason == "lease taken by intruder"


def test_deleted_lease_ends_the_term_and_is_recreated() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    elector.observe(at(1), None)
    assert elector.view(1).role is BeatRole.STANDBY
    action = elector.next_action(at(1))
    assert isinstance(action, Write) and action.expected_version is None


def test_fencing_tokens_strictly_increase_across_terms_and_restarts() -> None:
    store = Store()
    tokens = []
    t = 0.0
    for identity in ["a", "b", "a", "a", "c"]:  # "a" twice in a row: a restart with the same identity
        elector = Elector(identity, CONFIG)
        elector.observe(at(t), store.current)
        action = elector.next_action(at(t))
        if isinstance(action, Wait):
            t = action.until_mono
            action = elector.next_action(at(t))
        assert isinstance(action, Write)
        store.apply(elector, action, at(t), at(t))
        tokens.append(elector.view(t).fencing_token)
    assert tokens == sorted(set(tokens)) and len(tokens) == 5


def test_shutdown_reports_standby_before_the_release_is_sent() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    elector.close()
    release = elector.next_action(at(1))
    assert elector.view(1).role is not BeatRole.LEADER
    assert isinstance(release, Write) and release.kind == "release"
    assert release.record.holder == "" and release.record.duration_s == 1
    assert release.record.transitions == 0 and release.record.fencing_token == 1
    store.apply(elector, release, at(1), at(1))
    assert isinstance(elector.next_action(at(1)), Done)
    assert elector.view(1).role is BeatRole.UNKNOWN


def test_standby_shutdown_writes_nothing() -> None:
    elector = Elector("a", CONFIG)
    elector.observe(at(0), Versioned(LeaseRecord("b", 10), "1"))
    elector.close()
    assert isinstance(elector.next_action(at(0)), Done)


def test_errors_back_off_exponentially_up_to_the_cap() -> None:
    elector = Elector("a", CONFIG)
    waits = []
    for _ in range(8):
        action = elector.next_action(at(0))
        if isinstance(action, Wait):
            waits.append(action.until_mono)
        elector.call_failed(at(0), Read(1))
    assert elector.next_action(at(0)) == Wait(CONFIG.retry_cap_s)


def test_a_write_that_landed_after_a_timeout_is_picked_up_as_a_new_term() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    elector.observe(at(0), None)
    action = elector.next_action(at(0))
    assert isinstance(action, Write)
    store.put(action.record)  # it landed, but the response was lost
    elector.call_failed(at(1), action)
    assert elector.view(1).role is not BeatRole.LEADER
    elector.observe(at(1.2), store.current)
    again = elector.next_action(at(1.2))
    assert isinstance(again, Write) and again.kind == "acquire" and again.record.fencing_token == 2
    assert again.record.transitions == 0  # same holder: client-go counts no transition


def test_stream_events_older_than_our_own_write_are_ignored() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    store.put(LeaseRecord("", 1, EPOCH, EPOCH, 0, 1))
    stale = store.current
    store.put(LeaseRecord("b", 10, EPOCH, EPOCH, 1, 2))
    elector.observe(at(0), Versioned(LeaseRecord("", 1, EPOCH, EPOCH, 2, 3), "x"))  # a fresh read (fiction)
    store.current = Versioned(LeaseRecord("", 1, EPOCH, EPOCH, 2, 3), "x")
    action = elector.next_action(at(0))
    assert isinstance(action, Write)
    store.apply(elector, action, at(0), at(0))
    assert elector.view(0).role is BeatRole.LEADER
    # The watch, lagging, now delivers events from before our write: they change nothing.
    elector.observe(at(0.1), stale, from_stream=True)
    elector.observe(at(0.1), Versioned(LeaseRecord("b", 10), "y"), from_stream=True)
    assert elector.view(0.1).role is BeatRole.LEADER
    # Our echo arrives; from then on, stream events count again.
    elector.observe(at(0.2), store.current, from_stream=True)
    elector.observe(at(0.3), Versioned(LeaseRecord("intruder", 10), "z"), from_stream=True)
    assert elector.view(0.3).role is BeatRole.STANDBY


def test_own_write_delivered_by_the_stream_before_its_response_does_not_blind_the_stream() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    renew = elector.next_action(at(2))
    assert isinstance(renew, Write)
    stored = store.put(renew.record)
    elector.observe(at(2.01), stored, from_stream=True)  # the watch wins the race
    elector.write_succeeded(at(2.02), renew, at(2), stored)
    elector.observe(at(2.5), None, from_stream=True)  # kubectl delete lease
    assert elector.view(2.5).role is BeatRole.STANDBY


def test_tokens_keep_growing_after_the_lease_is_deleted() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    first = elector.view(0).fencing_token
    elector.observe(at(1), None)
    store.current = None
    action = elector.next_action(at(1))
    assert isinstance(action, Write) and action.expected_version is None
    assert action.record.fencing_token == first + 1


def test_a_duplicate_process_with_our_identity_ends_our_term_and_must_wait_for_expiry() -> None:
    store, old, duplicate = Store(), Elector("a", CONFIG), Elector("a", CONFIG)
    lead(old, store, 0)
    duplicate.observe(at(0.5), store.current)
    # The record names "a", but not a term this process wrote: it expires first, like anyone's.
    assert duplicate.next_action(at(0.5)) == Wait(10.5)
    # Should the duplicate still write (it is past expiry by its own view), the old one steps down.
    action = duplicate.next_action(at(10.5))
    assert isinstance(action, Write)
    store.apply(duplicate, action, at(10.5), at(10.5))
    old.observe(at(10.6), store.current, from_stream=True)
    old.observe(at(10.6), store.current)
    assert old.view(10.6).role is BeatRole.STANDBY
    assert old.last_loss_reason == "lease taken by another process with this identity"


def test_close_is_standby_at_once_even_with_an_acquisition_in_flight() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    elector.observe(at(0), None)
    acquire = elector.next_action(at(0))
    assert isinstance(acquire, Write)
    elector.close()
    store.apply(elector, acquire, at(0), at(0.1))  # it landed after SIGTERM
    assert elector.view(0.1).role is not BeatRole.LEADER
    release = elector.next_action(at(0.1))
    assert isinstance(release, Write) and release.kind == "release"
    store.apply(elector, release, at(0.1), at(0.1))
    assert store.current.record.holder == "" and isinstance(elector.next_action(at(0.2)), Done)


def test_a_list_sent_before_our_write_landed_is_dropped() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    sent = elector.write_generation
    lead(elector, store, 0)
    elector.observe(at(0.1), None, sent_at_generation=sent)  # stale "absent" from the watch's list
    assert elector.view(0.1).role is BeatRole.LEADER


def test_release_conflict_rereads_and_releases_again() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    renew = elector.next_action(at(2))
    assert isinstance(renew, Write)
    store.put(renew.record)  # landed, but the response was lost
    elector.call_failed(at(2.5), renew)
    elector.close()
    assert isinstance(elector.next_action(at(3)), Read)
    elector.observe(at(3), store.current)
    release = elector.next_action(at(3))
    assert isinstance(release, Write) and release.expected_version == store.current.version
    store.apply(elector, release, at(3), at(3))
    assert store.current.record.holder == ""


def test_shutdown_during_an_outage_gives_up() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    elector.close()
    t = 0.0
    for _ in range(20):
        action = elector.next_action(at(t))
        if isinstance(action, Done):
            break
        if isinstance(action, Wait):
            t = action.until_mono
            continue
        elector.call_failed(at(t), action)
    assert isinstance(elector.next_action(at(t)), Done)
