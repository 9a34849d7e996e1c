"""The Elector gated by its app's liveness (core/liveness.py), on a fake clock: campaign gating,
step-down on a missed heartbeat, resign, and that no path makes two leaders."""

from __future__ import annotations

import random

from sidecar.core.election import BeatRole, Elector, Read, Wait, Write
from sidecar.core.liveness import AppLiveness
from sidecar.core.record import RELEASED_DURATION_S, LeaseRecord
from tests.unit.test_election import CONFIG, Store, at, lead

APP_TTL_S = 3.0


def gated(identity: str) -> tuple[Elector, AppLiveness]:
    gate = AppLiveness(APP_TTL_S)
    return Elector(identity, CONFIG, gate=gate), gate


def test_a_candidate_whose_app_never_heartbeats_never_campaigns() -> None:
    store, elector = Store(), Elector("b", CONFIG, gate=AppLiveness(APP_TTL_S))
    other = Elector("a", CONFIG)
    lead(other, store, 10)
    elector.observe(at(10), store.current)
    store.put(LeaseRecord(holder="", duration_s=RELEASED_DURATION_S, acquire_time=at(11).wall,
                          renew_time=at(11).wall, transitions=0, fencing_token=1))
    elector.observe(at(11), store.current)  # released: free for anyone with a live app
    for t in (11, 20, 100, 1000):
        action = elector.next_action(at(t))
        assert isinstance(action, Wait), (t, action)
        assert elector.view(t).role is BeatRole.STANDBY


def test_a_candidate_campaigns_once_its_app_heartbeats() -> None:
    store, (elector, gate) = Store(), gated("a")
    elector.observe(at(0), None)
    assert isinstance(elector.next_action(at(10)), Wait)  # fences passed, but no app yet
    gate.beat(10, at(10).wall)
    action = elector.next_action(at(10))
    assert isinstance(action, Write) and action.kind == "acquire"
    store.apply(elector, action, at(10), at(10))
    assert elector.view(10).role is BeatRole.LEADER


def test_a_leader_whose_app_misses_its_ttl_is_standby_at_once_then_releases() -> None:
    store, (elector, gate) = Store(), gated("a")
    gate.beat(0, at(0).wall)
    lead(elector, store, 0)
    # The leader sleeps no later than the app's deadline, even between renewals.
    assert elector.next_action(at(1)) == Wait(2)
    gate.beat(1.5, at(1.5).wall)
    renew = elector.next_action(at(2))
    assert isinstance(renew, Write) and renew.kind == "renew"
    store.apply(elector, renew, at(2), at(2))
    assert elector.next_action(at(3)) == Wait(4)
    assert elector.view(4.49).role is BeatRole.LEADER
    # At 1.5 + 3 the app is overdue: the view says standby before any action is taken ...
    assert elector.view(4.5).role is BeatRole.STANDBY
    assert "app heartbeat missed" in (elector.view(4.5).term_end.reason or "")
    # ... and the next action is the release, written in client-go's release shape.
    release = elector.next_action(at(4.5))
    assert isinstance(release, Write) and release.kind == "release"
    assert release.record.holder == "" and release.record.duration_s == RELEASED_DURATION_S
    store.apply(elector, release, at(4.5), at(4.5))
    assert elector.view(5).role is BeatRole.STANDBY and not elector._done
    assert isinstance(elector.next_action(at(5)), Wait)  # no campaign without a fresh heartbeat
    assert elector.stats.leader_elections_lost == 1
    gate.beat(6, at(6).wall)
    again = elector.next_action(at(6))
    assert isinstance(again, Write) and again.kind == "acquire"  # our own release: no fence


def test_resign_is_standby_at_once_releases_and_sits_out() -> None:
    store, (elector, gate) = Store(), gated("a")
    gate.beat(0, at(0).wall)
    lead(elector, store, 0)
    gate.resign(1, sit_out_s=2)
    assert elector.view(1).role is BeatRole.STANDBY
    assert elector.view(1).term_end.reason == "resigned"
    release = elector.next_action(at(1))
    assert isinstance(release, Write) and release.kind == "release"
    store.apply(elector, release, at(1), at(1))
    gate.beat(2, at(2).wall)  # heartbeats during the sit-out do not end it
    assert isinstance(elector.next_action(at(2)), Wait)
    assert isinstance(elector.next_action(at(3.5)), Wait)  # sit-out over, but no heartbeat since
    gate.beat(3.6, at(3.6).wall)
    assert isinstance(elector.next_action(at(3.6)), Write)
    assert elector.stats.leader_elections_lost == 0  # a resign is not a loss


def test_a_failed_release_leaves_a_standby_and_the_lease_expires() -> None:
    store, (elector, gate) = Store(), gated("a")
    gate.beat(0, at(0).wall)
    lead(elector, store, 0)
    gate.resign(1, sit_out_s=100)
    t = 1.0
    for _ in range(10):
        action = elector.next_action(at(t))
        if isinstance(action, Wait):
            t = max(action.until_mono, t + 0.01)
            continue
        elector.call_failed(at(t), action)
        assert elector.view(t).role is BeatRole.STANDBY
        t += 0.1
    assert elector.view(t).role is BeatRole.STANDBY


def test_random_app_crashes_hangs_and_resigns_never_make_two_leaders() -> None:
    """Three gated candidates on one store; apps beat, fall silent and resign at random. At every
    instant at most one reports leader, and each term's write starts after the previous term's
    leader stopped reporting leader."""
    rng = random.Random(13)
    store = Store()
    candidates = {name: gated(name) for name in "abc"}
    silent_until = dict.fromkeys(candidates, 0.0)
    t = 0.0
    for elector, _ in candidates.values():
        elector.observe(at(t - CONFIG.lease_ttl_s), None)
    while t < 400:
        t = round(t + rng.choice((0.05, 0.1, 0.3)), 3)
        for name, (elector, gate) in candidates.items():
            if t >= silent_until[name]:
                gate.beat(t, at(t).wall)
            roll = rng.random()
            if roll < 0.004:
                silent_until[name] = t + rng.uniform(1, 8)  # crash or hang: beats stop for a while
            elif roll < 0.008:
                gate.resign(t, rng.uniform(0, 2))
            elector.observe(at(t), store.current)
            action = elector.next_action(at(t))
            if isinstance(action, Read):
                elector.observe(at(t), store.current)
                action = elector.next_action(at(t))
            if isinstance(action, Write):
                store.apply(elector, action, at(t), at(t))
        leading = [name for name, (elector, _) in candidates.items() if elector.view(t).role is BeatRole.LEADER]
        assert len(leading) <= 1, (t, leading)
        for name in leading:
            assert candidates[name][1].allows_leading(t)  # a leader always has a live app
    assert sum(e.stats.leader_elections_won for e, _ in candidates.values()) >= 5


def test_a_resign_with_no_sit_out_and_no_app_ttl_ends_the_term_and_releases() -> None:
    # Issue 17 item 2: it answered "leader" and released nothing.
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    elector.gate.resign(1, sit_out_s=0)
    assert elector.view(1).role is BeatRole.STANDBY and elector.view(1).term_end.reason == "resigned"
    release = elector.next_action(at(1))
    assert isinstance(release, Write) and release.kind == "release"
    store.apply(elector, release, at(1), at(1))
    again = elector.next_action(at(1.01))  # "release now; I may campaign again at once"
    assert isinstance(again, Write) and again.kind == "acquire"
    assert again.record.fencing_token > 1


def test_a_renewal_in_flight_past_the_sit_out_does_not_bring_the_term_back() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    renew = elector.next_action(at(2))
    assert isinstance(renew, Write) and renew.kind == "renew"
    elector.gate.resign(2.1, sit_out_s=0.5)  # while the renewal is in flight
    store.apply(elector, renew, at(2), at(3))  # lands after the sit-out
    assert elector.view(3).role is BeatRole.STANDBY
    release = elector.next_action(at(3))
    assert isinstance(release, Write) and release.kind == "release"


def test_a_late_heartbeat_after_the_app_ttl_cannot_resume_the_term() -> None:
    # Issue 17 item 9: the TTL ends the term at that instant, whatever comes next.
    store, (elector, gate) = Store(), gated("a")
    gate.beat(0, at(0).wall)
    lead(elector, store, 0)
    assert elector.view(2.99).role is BeatRole.LEADER
    assert elector.view(3).role is BeatRole.STANDBY
    gate.beat(3.2, at(3.2).wall)  # late, before the elect loop acted
    assert elector.view(3.2).role is BeatRole.STANDBY
    assert "app heartbeat missed" in elector.view(3.2).term_end.reason
    release = elector.next_action(at(3.2))
    assert isinstance(release, Write) and release.kind == "release"
    assert elector.stats.leader_elections_lost == 1
    assert gate.leading_until_mono() == 3.2 + APP_TTL_S  # the driver's timer publishes standby then
