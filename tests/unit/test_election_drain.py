"""`--handover-drain-timeout` (issue 18 item 6, rule D1) on a fake clock: a graceful release keeps
leading, draining, until the app resigns or the timeout; renewals go on; the deadline still rules."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sidecar.core.config import ConfigError, ElectionConfig
from sidecar.core.election import BeatRole, Done, Elector, Wait, Write
from tests.unit.test_election import CONFIG, Store, at, lead

DRAINING = replace(CONFIG, handover_drain_timeout_s=5.0)


def test_close_with_a_drain_leads_on_renews_and_releases_when_the_app_resigns() -> None:
    store, elector = Store(), Elector("a", DRAINING)
    lead(elector, store, 0)
    elector.close(at(1))
    view = elector.view(1)
    assert view.role is BeatRole.LEADER and view.draining and elector.draining(1)
    renew = elector.next_action(at(2))  # the term's renewals continue while draining
    assert isinstance(renew, Write) and renew.kind == "renew"
    store.apply(elector, renew, at(2), at(2))
    assert elector.next_action(at(3)) == Wait(4)
    elector.gate.resign(3.5, sit_out_s=0)  # the app's job is done
    assert elector.view(3.5).role is BeatRole.STANDBY and not elector.view(3.5).draining
    release = elector.next_action(at(3.5))
    assert isinstance(release, Write) and release.kind == "release" and release.record.holder == ""
    store.apply(elector, release, at(3.5), at(3.5))
    assert isinstance(elector.next_action(at(3.6)), Done)


def test_close_with_a_drain_releases_at_the_timeout() -> None:
    store, elector = Store(), Elector("a", DRAINING)
    lead(elector, store, 0)
    elector.close(at(1))
    t = 1.0
    while True:
        action = elector.next_action(at(t))
        if isinstance(action, Wait):
            assert action.until_mono <= 6
            t = action.until_mono
            continue
        assert isinstance(action, Write)
        if action.kind == "release":
            break
        store.apply(elector, action, at(t), at(t))
    assert t == 6 and elector.view(6).role is not BeatRole.LEADER
    assert elector.view(6).term_end.reason == "shutting down"


def test_the_renew_deadline_still_ends_a_draining_term() -> None:
    store, elector = Store(), Elector("a", replace(CONFIG, handover_drain_timeout_s=30.0))
    lead(elector, store, 0)
    elector.close(at(1))
    t = 1.0
    while t < 10:
        action = elector.next_action(at(t))
        if isinstance(action, Wait):
            t = max(action.until_mono, t + 0.01)
            continue
        if isinstance(action, Done):
            break
        elector.call_failed(at(t + 0.5), action)  # the API is gone
        t += 0.5
    assert elector.view(6).role is not BeatRole.LEADER
    assert elector.view(6).term_end.reason == "renew deadline passed"


def test_a_hand_over_with_a_drain_leads_on_then_releases_to_the_successor() -> None:
    store, elector = Store(), Elector("a", DRAINING)
    lead(elector, store, 0)
    assert elector.request_handover("b", at(1))
    assert elector.view(1).role is BeatRole.LEADER and elector.view(1).draining
    elector.gate.resign(1.5, sit_out_s=0)
    # Published before the Elector acts (the resign's own answer, the Events): already the hand-over.
    assert elector.view(1.5).term_end.reason == "handing over to b"
    release = elector.next_action(at(1.5))
    assert isinstance(release, Write) and release.kind == "release" and release.record.successor == "b"
    # The app's resign acknowledged the hand-over: the term ended as that hand-over (its Event).
    assert elector.view(1.5).term_end.reason == "handing over to b"
    store.apply(elector, release, at(1.5), at(1.5))
    assert not isinstance(elector.next_action(at(1.6)), Done)  # still a candidate, not shut down


def test_without_a_drain_close_ends_the_term_at_once() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    elector.close(at(1))
    assert elector.view(1).role is not BeatRole.LEADER and not elector.view(1).draining


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_negative_drain_timeout_is_refused_in_one_line(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"^--handover-drain-timeout: must be a duration of 0"):
        ElectionConfig(handover_drain_timeout_s=bad)


def test_a_close_during_a_hand_over_drain_still_releases_to_the_successor() -> None:
    store, elector = Store(), Elector("a", DRAINING)
    lead(elector, store, 0)
    assert elector.request_handover("b", at(1))
    elector.close(at(2))  # SIGTERM while draining for the hand-over
    assert elector.view(2).draining
    release = elector.next_action(at(6))  # the drain (from 1) times out
    assert isinstance(release, Write) and release.kind == "release" and release.record.successor == "b"
    store.apply(elector, release, at(6), at(6))
    assert isinstance(elector.next_action(at(6.1)), Done)
