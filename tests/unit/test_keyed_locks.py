"""Keyed locks' core rules (core/keyed_locks.py) on a fake clock: no sleeps, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sidecar.core.election import Moment, Wait, Write
from sidecar.core.keyed_locks import (
    BadRequest,
    KeyElector,
    OwnerGate,
    RequestRate,
    check_handle,
    check_key,
    lease_name_for,
    lock_election_config,
    parse_ttl_s,
    parse_wait_s,
)
from sidecar.core.liveness import AppLiveness
from sidecar.core.lock import Versioned
from sidecar.core.record import LeaseRecord

MAX_TTL_S = 30.0
CONFIG = lock_election_config(MAX_TTL_S, None)
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> Moment:
    return Moment(seconds, EPOCH + timedelta(days=300, seconds=seconds))


def key_elector(app: AppLiveness | None = None) -> tuple[KeyElector, OwnerGate]:
    gate = OwnerGate(app)
    return KeyElector("pod-a", CONFIG, gate), gate


def want(elector: KeyElector, gate: OwnerGate, now: float, owner: str = "0123456789abcdef",
         ttl_s: float = 10.0, wait_s: float = 60.0) -> None:
    elector.set_owner(owner)
    gate.want(owner, ttl_s, now + wait_s)


def test_key_grammar() -> None:
    for key in ("a", "tenant-42/migrate", "Report.2026:Q1", "x" * 200, "a/b/c"):
        assert check_key(key) == key
    for key in ("", "-a", "a//b", "/a", "a/", "x" * 201, "a b", "a?b", "é"):
        with pytest.raises(BadRequest, match=r"^key:"):
            check_key(key)


def test_lease_names_are_distinct_valid_and_bounded() -> None:
    names = {lease_name_for("locks-", key) for key in ("Report", "report", "re/port", "re-port", "!" * 0 + "9")}
    assert len(names) == 5
    assert all(len(name) <= 253 and name == name.lower() for name in names)
    assert lease_name_for("p-", "x" * 200).startswith("p-" + "x" * 40 + "-")


def test_ttl_wait_and_handle_bounds() -> None:
    assert parse_ttl_s(None, MAX_TTL_S) == MAX_TTL_S
    assert parse_ttl_s("1500ms", MAX_TTL_S) == 1.5
    for bad in ("0", "31s", "0.5", "x", "-2"):
        with pytest.raises(BadRequest, match=r"^ttl:"):
            parse_ttl_s(bad, MAX_TTL_S)
    assert parse_wait_s(None) == 0.0 and parse_wait_s("0") == 0.0 and parse_wait_s("5s") == 5.0
    with pytest.raises(BadRequest, match=r"^wait:"):
        parse_wait_s("301")
    assert check_handle("0123456789abcdef")
    for bad in (None, "", "0123456789ABCDEF", "0123456789abcde"):
        with pytest.raises(BadRequest, match=r"^owner:"):
            check_handle(bad)


def test_no_owner_no_campaign() -> None:
    elector, _ = key_elector()
    elector.watched_since_mono = -1000.0
    elector.observe(at(0), None)
    action = elector.next_action(at(100))
    assert isinstance(action, Wait)


def test_a_new_key_on_an_old_stream_is_taken_at_once_with_a_token_above_the_lists_version() -> None:
    elector, gate = key_elector()
    elector.watched_since_mono = 0.0
    elector.version_floor = 5000
    elector.observe(at(40), None)  # K3: the watch is older than the max TTL
    want(elector, gate, 40)
    action = elector.next_action(at(40))
    assert isinstance(action, Write) and action.kind == "acquire" and action.expected_version is None
    assert action.record.fencing_token >= 5000  # K4
    assert action.record.holder == "pod-a/0123456789abcdef"
    assert action.record.duration_s == int(MAX_TTL_S)  # K1: waits judged with the max TTL


def test_a_young_stream_waits_until_it_is_max_ttl_old_and_a_read_waits_a_full_ttl() -> None:
    elector, gate = key_elector()
    elector.watched_since_mono = 10.0
    elector.observe(at(12), None)
    want(elector, gate, 12)
    action = elector.next_action(at(12))
    assert isinstance(action, Wait) and action.until_mono == 10.0 + MAX_TTL_S
    read_only, gate2 = key_elector()
    read_only.watched_since_mono = None  # a read, not the stream: F3 unchanged
    read_only.observe(at(12), None)
    want(read_only, gate2, 12)
    action = read_only.next_action(at(12))
    assert isinstance(action, Wait) and action.until_mono == 12 + MAX_TTL_S


def test_another_holder_is_fenced_with_the_max_ttl_even_if_its_record_says_less() -> None:
    elector, gate = key_elector()
    elector.watched_since_mono = -1000.0
    other = LeaseRecord(holder="pod-b/aaaaaaaaaaaaaaaa", duration_s=1, acquire_time=EPOCH, renew_time=EPOCH,
                        fencing_token=7)
    elector.observe(at(0), Versioned(other, "100"))
    want(elector, gate, 0, wait_s=100)
    action = elector.next_action(at(5))
    assert isinstance(action, Wait) and action.until_mono >= MAX_TTL_S
    action = elector.next_action(at(MAX_TTL_S + 0.1))
    assert isinstance(action, Write) and action.kind == "acquire"
    assert action.record.fencing_token >= 100  # K4: at least the resourceVersion it replaces
    assert action.record.fencing_token > 7


def test_a_release_is_taken_at_once() -> None:
    elector, gate = key_elector()
    elector.watched_since_mono = -1000.0
    release = LeaseRecord(holder="", duration_s=1, acquire_time=EPOCH, renew_time=EPOCH, fencing_token=9)
    elector.observe(at(0), Versioned(release, "200"))
    want(elector, gate, 0)
    action = elector.next_action(at(0))
    assert isinstance(action, Write) and action.record.fencing_token >= 200  # K4: at least the version replaced


def _hold(elector: KeyElector, gate: OwnerGate, t: float) -> Versioned:
    elector.watched_since_mono = -1000.0
    elector.observe(at(t), None)
    want(elector, gate, t)
    action = elector.next_action(at(t))
    assert isinstance(action, Write)
    stored = Versioned(action.record, "300")
    elector.write_succeeded(at(t), action, at(t), stored)
    gate.renewed(t)
    assert elector.is_leader(t)
    return stored


def test_an_owner_that_stops_renewing_loses_the_lock_at_its_ttl_and_the_sidecar_releases() -> None:
    elector, gate = key_elector()
    _hold(elector, gate, 0)
    gate.renewed(5)  # the owner's PUT
    assert elector.is_leader(14.9)
    assert not elector.is_leader(15.0)  # 5 + ttl 10: the holder's own deadline comes first (K2)
    action = elector.next_action(at(15.0))
    assert isinstance(action, Write) and action.kind == "release" and action.record.holder == ""


def test_the_holders_deadline_is_before_anyone_elses_takeover() -> None:
    elector, gate = key_elector()
    _hold(elector, gate, 0)
    gate.renewed(100)  # the owner keeps renewing, but the sidecar's renewals stopped (cut off)
    deadline = elector.valid_until_mono
    assert deadline == CONFIG.renew_deadline < MAX_TTL_S  # others wait MAX_TTL_S from their sight
    assert not elector.is_leader(deadline)


def test_the_apps_liveness_lapsing_releases_the_lock() -> None:
    app = AppLiveness(ttl_s=2.0)
    app.beat(0, EPOCH)
    elector, gate = key_elector(app)
    _hold(elector, gate, 0)
    assert elector.is_leader(1.9)
    assert not elector.is_leader(2.0)
    action = elector.next_action(at(2.0))
    assert isinstance(action, Write) and action.kind == "release"


def test_the_owner_changes_only_between_terms() -> None:
    elector, gate = key_elector()
    _hold(elector, gate, 0)
    with pytest.raises(RuntimeError):
        elector.set_owner("fedcba9876543210")


def test_request_rate() -> None:
    rate = RequestRate(rate_per_s=2.0, burst=2)
    assert rate.take(0.0) == 0.0 and rate.take(0.0) == 0.0
    assert rate.take(0.0) == pytest.approx(0.5)
    assert rate.take(0.5) == 0.0


def test_a_late_app_heartbeat_never_brings_a_keys_term_back() -> None:
    app = AppLiveness(ttl_s=2.0)
    app.beat(0, EPOCH)
    elector, gate = key_elector(app)
    _hold(elector, gate, 0)
    gate.renewed(1.0)  # the owner renews within its ttl all along
    app.beat(2.5, EPOCH + timedelta(seconds=2.5))  # late: the app's liveness lapsed at 2.0
    assert not elector.is_leader(2.6)  # the election's rule (L3): over from the lapse, for good
    action = elector.next_action(at(2.6))
    assert isinstance(action, Write) and action.kind == "release"
    assert elector.view(2.6).term_end is not None and "app heartbeat missed" in elector.view(2.6).term_end.reason


def test_a_resign_of_the_election_leaves_a_keys_term_alone() -> None:
    app = AppLiveness(ttl_s=2.0)
    app.beat(0, EPOCH)
    elector, gate = key_elector(app)
    _hold(elector, gate, 0)
    app.resign(0.5, sit_out_s=10)  # POST /resign: the election's term ends, the lock's does not
    assert elector.is_leader(1.0)
    action = elector.next_action(at(1.0))
    assert isinstance(action, Wait)  # nothing to write yet: no release
    app.beat(1.5, EPOCH + timedelta(seconds=1.5))
    assert elector.is_leader(3.0)  # the app alive (its last heartbeat + 2 s), the owner within its ttl


def test_a_close_holds_the_release_until_the_owners_told_deadline_and_the_wait_is_no_attempt() -> None:
    elector, gate = key_elector()
    _hold(elector, gate, 0)
    gate.renewed(2)  # the owner's PUT at 2: its ttl runs to 12
    told_until = elector.promise_owner(2)
    assert told_until == 12
    elector.close(at(3))  # SIGTERM
    assert not elector.is_leader(3)
    for t in (3, 4, 5, 6, 7, 8, 9, 10, 11.99):  # more decisions than the Elector's release attempts
        held = elector.next_action(at(t))
        assert isinstance(held, Wait) and held.until_mono == told_until and held.holds_release
        assert "(K7)" in held.reason
    assert elector.held_release(11.99) == held
    release = elector.next_action(at(told_until))
    assert isinstance(release, Write) and release.kind == "release" and release.record.holder == ""
    assert elector.held_release(told_until) is None


def test_an_owners_own_release_is_held_by_nothing() -> None:
    elector, gate = key_elector()
    _hold(elector, gate, 0)
    elector.promise_owner(0)  # told 10
    elector.owner_released()  # DELETE: its work stopped
    gate.withdraw("released by its owner")
    assert elector.held_release(1) is None
    release = elector.next_action(at(1))
    assert isinstance(release, Write) and release.kind == "release"


@pytest.mark.parametrize("request_field", ["handover_to", "preferred_holder"])
def test_a_hand_over_request_on_a_locks_lease_is_ignored(request_field: str) -> None:
    elector, gate = key_elector()
    stored = _hold(elector, gate, 0)
    asked = replace(stored.record, **{request_field: "pod-b/aaaaaaaaaaaaaaaa"})  # `lease-sidecar handover`
    elector.observe(at(1), Versioned(asked, "301"))
    assert elector.handover_requested(asked) is None
    gate.renewed(5)
    for t in (1, 3, 5):
        action = elector.next_action(at(t))
        assert isinstance(action, Wait) and not action.holds_release  # no release, none held back
        assert elector.is_leader(t)
    renewal = elector.next_action(at(CONFIG.renewal_interval_s))
    assert isinstance(renewal, Write) and renewal.kind == "renew"  # the owner keeps the lock
    assert renewal.record.holder == "pod-a/0123456789abcdef" and renewal.expected_version == "301"
    assert elector.view(CONFIG.renewal_interval_s).term_end is None
