"""The state machine on a fake clock: no sleeps, no mocks, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sidecar.core.config import ElectionConfig
from sidecar.core.election import BeatRole, Done, Elector, Moment, Read, TermEnd, Wait, Write
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
    if store.current is None:  # F3: an absent Lease is created one TTL after it was first seen absent
        elector.observe(at(t - CONFIG.lease_ttl_s), None)
    elector.observe(at(t), store.current)
    action = elector.next_action(at(t))
    assert isinstance(action, Write) and action.kind == "acquire"
    store.apply(elector, action, at(t), at(t))
    assert elector.view(t).role is BeatRole.LEADER


def test_brand_new_candidate_creates_an_absent_lease_one_ttl_after_it_first_saw_it_absent() -> None:
    elector = Elector("a", CONFIG)
    assert elector.view(0).role is BeatRole.UNKNOWN
    assert isinstance(elector.next_action(at(0)), Read)
    elector.observe(at(0), None)
    assert elector.view(0).role is BeatRole.STANDBY
    # A holder paused (or cut off) when its Lease was deleted may still believe it leads.
    wait = elector.next_action(at(0))
    assert wait == Wait(10) and "no lease" in wait.reason
    elector.observe(at(4), None)  # still absent: the wait counts from the *first* observation
    assert elector.next_action(at(9.99)) == Wait(10)
    action = elector.next_action(at(10))
    assert isinstance(action, Write) and action.expected_version is None
    assert action.record.holder == "a" and action.record.fencing_token == 1
    assert action.record.duration_s == 10 and action.record.transitions == 0


def test_another_candidates_acquisition_ends_the_no_history_fence_so_its_release_is_taken_at_once() -> None:
    store, a, b = Store(), Elector("a", CONFIG), Elector("b", CONFIG)
    b.observe(at(0.5), None)  # b's F3 fence runs to 10.5
    lead(a, store, 10)  # a saw the absence at 0 and waited its own TTL
    b.observe(at(10), store.current)
    release = (a.close(at(10.1)), a.next_action(at(10.1)))[1]
    assert isinstance(release, Write) and release.kind == "release"
    store.apply(a, release, at(10.1), at(10.1))
    b.observe(at(10.2), store.current)
    take = b.next_action(at(10.2))
    assert isinstance(take, Write) and take.kind == "acquire", take


def test_an_emptied_record_after_an_acquisition_raises_the_no_history_fence_again() -> None:
    store, b = Store(), Elector("b", CONFIG)
    b.observe(at(0), None)
    store.put(LeaseRecord("a", 10, EPOCH, EPOCH, 0, 1))
    b.observe(at(1), store.current)  # the acquisition ends b's F3 fence; F1 fences a to 11
    store.put(LeaseRecord("", 10, EPOCH, EPOCH, 0, 1))  # a third party empties it: not a release
    b.observe(at(2), store.current)
    assert b.next_action(at(11.5)) == Wait(12)  # F2 for a (2 + 10) and F3 (2 + 10)


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
    write_a, write_b = a.next_action(at(10)), b.next_action(at(10))
    assert isinstance(write_a, Write) and isinstance(write_b, Write)
    store.apply(a, write_a, at(10), at(10))
    store.apply(b, write_b, at(10), at(10))
    assert a.view(10).role is BeatRole.LEADER and b.view(10).role is not BeatRole.LEADER
    assert isinstance(b.next_action(at(10)), Read)
    assert b.stats.leader_elections_lost == 1


def test_overwritten_holder_makes_the_leader_step_down_at_the_next_observation() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    store.put(LeaseRecord("intruder", 10, EPOCH, EPOCH, 1, 2))
    elector.observe(at(1), store.current)
    assert elector.view(1).role is BeatRole.STANDBY
    assert elector.last_loss_reason == "lease taken by intruder"


def test_leader_that_sees_its_lease_deleted_steps_down_at_once_then_waits_like_anyone() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    elector.observe(at(1), None)
    view = elector.view(1)
    assert view.role is BeatRole.STANDBY and view.term_end is not None
    assert view.term_end.reason == "lease deleted" and view.term_end.fencing_token == 1
    # It cannot know who creates next (a third party may have recreated and deleted it meanwhile).
    assert elector.next_action(at(1)) == Wait(11)
    action = elector.next_action(at(11))
    assert isinstance(action, Write) and action.expected_version is None


def test_fencing_tokens_strictly_increase_across_terms_and_restarts() -> None:
    store = Store()
    tokens = []
    t = 0.0
    for identity in ["a", "b", "a", "a", "c"]:  # "a" twice in a row: a restart with the same identity
        elector = Elector(identity, CONFIG)
        elector.observe(at(t), store.current)
        if store.current is None:
            t += CONFIG.lease_ttl_s  # F3: a brand-new election's first leader comes one TTL later
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
    elector.observe(at(-10), None)
    action = elector.next_action(at(0))
    assert isinstance(action, Write)
    store.put(action.record)  # it landed, but the response was lost
    elector.call_failed(at(1), action)
    assert elector.view(1).role is not BeatRole.LEADER
    elector.observe(at(1.2), store.current)
    again = elector.next_action(at(1.2))  # our own record (rule O): no fence
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
    action = elector.next_action(at(11))
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
    # Its deadline (6) passed long before it saw the takeover: that, not the takeover, ended it.
    assert old.view(10.6).term_end == TermEnd(1, "renew deadline passed")


def test_a_record_with_our_identity_and_another_token_ends_our_term_at_once() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    store.put(LeaseRecord("a", 10, EPOCH, EPOCH, 0, 99))
    elector.observe(at(1), store.current)
    assert elector.view(1).term_end == TermEnd(1, "lease taken by another process with this identity")


def test_close_is_standby_at_once_even_with_an_acquisition_in_flight() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    elector.observe(at(-10), None)
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


# ---------------------------------------------------------------- fences (issue 12): a vanished or
# rewritten record is a change its holder may not have seen.

def held_by(holder: str, token: int, duration_s: int = 10, renewed_s: float = 0) -> LeaseRecord:
    return LeaseRecord(holder, duration_s, EPOCH, EPOCH + timedelta(seconds=renewed_s), 1, token)


def released(after: LeaseRecord) -> LeaseRecord:
    """What the holder itself writes on release (client-go's shape, and ours)."""
    return LeaseRecord("", 1, EPOCH + timedelta(hours=1), EPOCH + timedelta(hours=1), after.transitions,
                       after.fencing_token)


def first_write_time(elector: Elector, start: float, store: Store | None = None) -> float:
    """When `elector` first wants to write, stepping through its waits (no new observations)."""
    t = start
    for _ in range(10):
        action = elector.next_action(at(t))
        if isinstance(action, Write):
            return t
        assert isinstance(action, Wait), action
        t = action.until_mono
    raise AssertionError("never wrote")


def test_standby_that_sees_the_lease_deleted_waits_the_last_holders_duration_from_then() -> None:
    store, standby = Store(), Elector("b", CONFIG)
    standby.observe(at(0), store.put(held_by("a", 1)))
    standby.observe(at(4), store.put(held_by("a", 1, renewed_s=4)))  # a renews
    store.current = None
    standby.observe(at(5), None)  # kubectl delete lease; "a" (paused, cut off) did not see it
    wait = standby.next_action(at(5))
    assert wait == Wait(15) and "did not see" in wait.reason  # not at once, and not 14 (a's expiry)
    assert standby.view(5).holder is None and standby.view(5).role is BeatRole.STANDBY
    action = standby.next_action(at(15))
    assert isinstance(action, Write) and action.expected_version is None and action.record.fencing_token == 2


def test_the_wait_uses_the_last_holders_duration_when_longer_than_ours() -> None:
    standby = Elector("b", CONFIG)
    standby.observe(at(0), Versioned(held_by("a", 1, duration_s=25), "1"))
    standby.observe(at(3), None)
    assert first_write_time(standby, 3) == 28


def test_deletion_while_the_standby_waits_for_expiry_restarts_the_wait() -> None:
    standby = Elector("b", CONFIG)
    standby.observe(at(0), Versioned(held_by("a", 1), "1"))
    assert standby.next_action(at(8)) == Wait(10)
    standby.observe(at(8), None)
    assert first_write_time(standby, 8) == 18


def test_recreation_by_a_third_party_during_the_wait_does_not_shorten_it() -> None:
    standby = Elector("b", CONFIG)
    standby.observe(at(0), Versioned(held_by("a", 1), "1"))
    standby.observe(at(5), None)
    standby.observe(at(7), Versioned(held_by("x", 3, duration_s=3), "2"))  # someone's short lease
    assert first_write_time(standby, 7) == 17  # x, never seen before, is credited our TTL (rule C)
    # Recreated with no holder, even in the shape of a release: nobody's release, history still unknown.
    for empty in (LeaseRecord(), released(held_by("x", 3))):
        standby = Elector("b", CONFIG)
        standby.observe(at(0), Versioned(held_by("a", 1), "1"))
        standby.observe(at(5), None)
        standby.observe(at(7), Versioned(empty, "2"))
        assert first_write_time(standby, 7) == 17, empty


def test_a_third_party_emptying_the_holder_is_not_a_release() -> None:
    store, a, b = Store(), Elector("a", CONFIG), Elector("b", CONFIG)
    lead(a, store, 0)
    b.observe(at(0.5), store.current)
    # Not the holder's release: its duration stays, no times, or transitions/token differ.
    record = store.current.record
    for cleared in (replace(record, holder=""), replace(released(record), transitions=7),
                    replace(released(record), fencing_token=None), replace(released(record), acquire_time=None)):
        standby = Elector("b", CONFIG)
        standby.observe(at(0.5), store.current)
        standby.observe(at(3), Versioned(cleared, "x"))
        assert first_write_time(standby, 3) == 13, cleared
    # The leader sees it and steps down at once, with the true reason.
    a.observe(at(3), Versioned(replace(record, holder=""), "x"))
    assert a.view(3).term_end == TermEnd(1, "holder cleared by another writer")


def test_the_holders_own_release_is_taken_at_once() -> None:
    store, a, b = Store(), Elector("a", CONFIG), Elector("b", CONFIG)
    lead(a, store, 0)
    b.observe(at(0.5), store.current)
    a.close(at(1))
    release = a.next_action(at(1))
    assert isinstance(release, Write)
    store.apply(a, release, at(1), at(1))
    b.observe(at(1.05), store.current)
    assert first_write_time(b, 1.05) == 1.05
    # A brand-new candidate that finds a release takes it at once too: the release says its holder is done.
    newcomer = Elector("c", CONFIG)
    newcomer.observe(at(2), store.current)
    assert first_write_time(newcomer, 2) == 2


@pytest.mark.parametrize(("new_duration_s", "expected_until"), [(1, 13), (3, 13), (20, 23)])
def test_a_changed_lease_duration_is_judged_against_the_larger_of_old_and_new(
        new_duration_s: int, expected_until: float) -> None:
    store, a, b = Store(), Elector("a", CONFIG), Elector("b", CONFIG)
    lead(a, store, 0)
    b.observe(at(0), store.current)
    # A third party (kubectl edit) changes leaseDurationSeconds; "a", cut off, renews under 10.
    edited = store.put(replace(store.current.record, duration_s=new_duration_s))
    b.observe(at(3), edited)
    assert first_write_time(b, 3) == expected_until
    # The holder itself does not care: same identity and token, its term goes on and it renews.
    a.observe(at(3), edited)
    assert a.view(3).role is BeatRole.LEADER
    renew = a.next_action(at(4))
    assert isinstance(renew, Write) and renew.kind == "renew" and renew.record.duration_s == 10


def test_after_a_shrink_the_holders_next_renewal_counts_again_from_its_own_duration() -> None:
    store, b = Store(), Elector("b", CONFIG)
    b.observe(at(0), store.put(held_by("a", 1)))
    b.observe(at(3), store.put(held_by("a", 1, duration_s=1)))
    b.observe(at(5), store.put(held_by("a", 1, renewed_s=5)))
    assert first_write_time(b, 5) == 15


def test_a_new_holder_replacing_an_old_one_keeps_the_old_ones_fence_as_it_was() -> None:
    b = Elector("b", CONFIG)
    b.observe(at(0), Versioned(held_by("a", 1), "1"))
    b.observe(at(2), Versioned(held_by("x", 2, duration_s=1), "2"))  # took it early, in b's view
    # Not 3: x, first seen now, is credited b's own TTL (rule C), whatever its record says; and a's
    # fence (10) is not extended to 2 + 10 by x's acquisition (it stays under x's).
    assert first_write_time(b, 2) == 12


def test_a_release_right_after_a_failover_is_taken_at_once() -> None:
    # b and c both saw a expire; c won the race. c's release must not wait for a's old fence.
    store, b, c = Store(), Elector("b", CONFIG), Elector("c", CONFIG)
    old = store.put(held_by("a", 1))
    for elector in (b, c):
        elector.observe(at(0), old)
    take_b, take_c = b.next_action(at(10)), c.next_action(at(10))
    assert isinstance(take_b, Write) and isinstance(take_c, Write)
    store.apply(c, take_c, at(10), at(10))
    store.apply(b, take_b, at(10), at(10.01))  # conflict: b re-reads
    b.observe(at(10.02), store.current)
    c.close(at(11))
    release = c.next_action(at(11))
    assert isinstance(release, Write)
    store.apply(c, release, at(11), at(11))
    b.observe(at(11.01), store.current)
    assert first_write_time(b, 11.01) == 11.01


def test_an_empty_record_rewritten_empty_sets_no_fence() -> None:
    b = Elector("b", CONFIG)
    b.observe(at(0), Versioned(released(held_by("a", 1)), "1"))
    b.observe(at(1), Versioned(replace(released(held_by("a", 1)), renew_time=EPOCH), "2"))  # touched
    assert first_write_time(b, 1) == 1


def test_brand_new_candidate_with_an_empty_record_waits_one_ttl() -> None:
    newcomer = Elector("c", CONFIG)
    newcomer.observe(at(0), Versioned(LeaseRecord(), "1"))  # e.g. a Lease created empty by hand
    assert first_write_time(newcomer, 0) == 10


def test_the_leader_whose_lease_is_deleted_recreates_only_after_its_fences() -> None:
    store, a, b = Store(), Elector("a", CONFIG), Elector("b", CONFIG)
    lead(a, store, 0)
    b.observe(at(0), store.current)
    store.current = None
    a.observe(at(1), None)
    b.observe(at(1.2), None)
    assert a.view(1).role is BeatRole.STANDBY
    assert first_write_time(a, 1) == 11 and first_write_time(b, 1.2) == 11.2
    create = a.next_action(at(11))
    assert isinstance(create, Write)
    store.apply(a, create, at(11), at(11))
    b.observe(at(11.01), store.current)
    assert b.next_action(at(11.01)) == Wait(11.01 + 10)


# ---------------------------------------------------------------- honest step-down reasons

def test_a_deadline_passed_during_a_pause_is_the_reason_even_if_a_takeover_is_seen_first() -> None:
    store, a = Store(), Elector("a", CONFIG)
    lead(a, store, 0)
    # Paused (SIGSTOP) from 1 to 30: the first thing it sees on waking is someone else's record.
    assert a.view(30).term_end == TermEnd(1, "renew deadline passed")  # before any observation
    a.observe(at(30), Versioned(held_by("b", 2), "9"), from_stream=True)
    assert a.view(30).term_end == TermEnd(1, "renew deadline passed")
    assert a.last_loss_reason == "renew deadline passed"


def test_close_after_an_unnoticed_deadline_reports_the_deadline_not_shutdown() -> None:
    store, a = Store(), Elector("a", CONFIG)
    lead(a, store, 0)
    a.close(at(7))
    assert a.view(7).term_end == TermEnd(1, "renew deadline passed")
    b = Elector("b", CONFIG)
    lead(b, Store(), 0)
    b.close(at(1))
    assert b.view(1).term_end == TermEnd(1, "shutting down")


def test_an_earlier_terms_reason_never_describes_a_later_term() -> None:
    store, a = Store(), Elector("a", CONFIG)
    lead(a, store, 0)
    store.current = None
    a.observe(at(1), None)
    assert a.view(1).term_end == TermEnd(1, "lease deleted")
    create = a.next_action(at(11))
    assert isinstance(create, Write)
    store.apply(a, create, at(11), at(11))
    assert a.view(11).role is BeatRole.LEADER
    assert a.view(17).term_end == TermEnd(2, "renew deadline passed")  # term 2's own end


def test_closing_before_anything_was_written_is_done_without_a_call() -> None:
    elector = Elector("a", CONFIG)  # SIGTERM during start-up: not even a read yet
    elector.close(at(0))
    assert isinstance(elector.next_action(at(0)), Done)
    timed_out = Elector("a", CONFIG)  # an acquisition of unknown outcome must be read first
    timed_out.observe(at(-10), None)
    acquire = timed_out.next_action(at(0))
    assert isinstance(acquire, Write)
    timed_out.call_failed(at(1), acquire)
    timed_out.close(at(1))
    assert isinstance(timed_out.next_action(at(2)), Read)


def test_an_acquisition_without_a_token_keeps_the_no_history_fence() -> None:
    # A client-go candidate (or `kubectl create`) creates a missing Lease at once, without waiting
    # for a holder it never saw: its record proves nothing about that holder, so F3 stays.
    store, c = Store(), Elector("c", CONFIG)
    c.observe(at(100), None)  # F3 until 110
    store.put(LeaseRecord("g", 10, EPOCH, EPOCH, 0, None))
    c.observe(at(100.1), store.current)
    store.put(LeaseRecord("", 1, EPOCH, EPOCH, 0, None))  # g releases, client-go style
    c.observe(at(101), store.current)
    assert c.next_action(at(101)) == Wait(110)


def test_a_duplicate_identitys_acquisition_is_not_mistaken_for_our_timed_out_one() -> None:
    # Two processes named "q" saw the same release and chose the same token. q1's write timed out
    # and did not land; q2's did. q1 must not take q2's record for its own (rule O would skip the
    # fences, and q1 would lead beside q2).
    store = Store()
    store.put(LeaseRecord("x", 10, EPOCH, EPOCH, 3, 5))
    q1, q2 = Elector("q", CONFIG), Elector("q", CONFIG)
    for elector in (q1, q2):
        elector.observe(at(0), store.current)
    store.put(LeaseRecord("", 1, EPOCH, EPOCH, 3, 5))
    for elector in (q1, q2):
        elector.observe(at(1), store.current)
    lost = q1.next_action(at(1))
    landed = q2.next_action(at(1.000001))  # another process: another microsecond
    assert isinstance(lost, Write) and isinstance(landed, Write)
    assert lost.record.fencing_token == landed.record.fencing_token
    q1.call_failed(at(5), lost)
    store.apply(q2, landed, at(1.1), at(1.2))
    q1.observe(at(5.3), store.current)
    assert q1.view(5.3).role is BeatRole.STANDBY
    assert isinstance(q1.next_action(at(5.3)), Wait)  # q2's record is fenced like anyone's


def test_a_release_of_a_term_we_missed_is_taken_at_once() -> None:
    # The watch relisted across the holder's next term (an API outage): we saw token 1, then the
    # release of token 2. That term's holder passed its fences and stepped down before releasing.
    store, b = Store(), Elector("b", CONFIG)
    store.put(LeaseRecord("a", 10, EPOCH, EPOCH, 0, 1))
    b.observe(at(0), store.current)
    store.put(LeaseRecord("", 1, EPOCH, EPOCH, 0, 2))
    b.observe(at(12), store.current)
    take = b.next_action(at(12))
    assert isinstance(take, Write) and take.kind == "acquire", take


def test_an_emptied_record_with_an_older_or_no_token_is_not_a_release() -> None:
    store, b = Store(), Elector("b", CONFIG)
    store.put(LeaseRecord("a", 10, EPOCH, EPOCH, 0, 3))
    b.observe(at(0), store.current)
    store.put(LeaseRecord("", 1, EPOCH, EPOCH, 0, None))  # release-shaped, but its token was dropped
    b.observe(at(1), store.current)
    assert b.next_action(at(1)) == Wait(11)


@pytest.mark.parametrize("edited_duration_s", [1, None])
def test_a_fresh_candidate_whose_first_view_is_an_edited_duration_waits_its_own_ttl(
        edited_duration_s: int | None) -> None:
    # Issue 17 item 1: the holder is cut off (or between renewals) when a third party shortens or
    # removes leaseDurationSeconds; a candidate that never saw the holder's own record (a new pod, a
    # restarted sidecar) must not believe the edited figure.
    store, a = Store(), Elector("a", CONFIG)
    lead(a, store, 0)
    edited = store.put(replace(store.current.record, duration_s=edited_duration_s))
    newcomer = Elector("c", CONFIG)
    newcomer.observe(at(1), edited)
    assert first_write_time(newcomer, 1) == 11  # 1 + c's own TTL, not 2 (or 1)
    assert a.valid_until_mono == 6  # the holder's deadline is covered


def test_a_missing_lease_duration_reads_as_unknown_and_is_never_written() -> None:
    record = LeaseRecord.from_lease({"spec": {"holderIdentity": "a", "leaseDurationSeconds": None}})
    assert record.duration_s is None
    assert "leaseDurationSeconds" not in record.to_spec()
    assert LeaseRecord.from_lease({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 0}}).duration_s is None


def test_a_holder_is_credited_the_longest_duration_seen_even_after_a_missed_renewal() -> None:
    b = Elector("b", CONFIG)
    b.observe(at(0), Versioned(held_by("a", 1, duration_s=25), "1"))
    # b's watch relists across a's renewal at 10 and a later hand edit: its next view is the edit.
    b.observe(at(12), Versioned(held_by("a", 1, duration_s=1, renewed_s=10), "3"))
    assert first_write_time(b, 12) == 37


def test_a_creation_with_no_memory_takes_a_token_above_the_version_that_showed_the_lease_absent() -> None:
    # Issue 18 item 2: before, a Lease deleted while no sidecar remembered restarted tokens at 1.
    # Every earlier token is at most its own acquisition's resourceVersion, below the list's.
    newcomer = Elector("c", CONFIG)
    newcomer.observe(at(0), None, absent_version="7012")
    create = newcomer.next_action(at(10))
    assert isinstance(create, Write) and create.expected_version is None
    assert create.record.fencing_token == 7013


def test_an_acquisition_takes_a_token_above_the_version_it_replaces() -> None:
    newcomer = Elector("c", CONFIG)
    # Re-created by hand (no token, no transitions) after the old Lease's tokens reached 6000.
    newcomer.observe(at(0), Versioned(LeaseRecord(), "6500"))
    take = newcomer.next_action(at(10))
    assert isinstance(take, Write) and take.expected_version == "6500" and take.record.fencing_token == 6501
    # A record whose token is above its version (an etcd restored from a backup) still counts.
    other = Elector("d", CONFIG)
    other.observe(at(0), Versioned(released(held_by("a", 9000)), "6600"))
    take = other.next_action(at(0))
    assert isinstance(take, Write) and take.record.fencing_token == 9001
    # Versions that are not integers (another store's) raise nothing: the old rule.
    third = Elector("e", CONFIG)
    third.observe(at(0), Versioned(released(held_by("a", 4)), "v-abc"))
    take = third.next_action(at(0))
    assert isinstance(take, Write) and take.record.fencing_token == 5
