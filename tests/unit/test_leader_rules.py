"""The pure rules of issue 11: the fenced leader-Service slice, Event series and rate limit, and the
successor choice and window. No I/O, no clock but the numbers given."""

from __future__ import annotations

from sidecar.core.announce import (
    BECAME_LEADER,
    HANDOVER_REQUESTED,
    LOST_LEADERSHIP,
    RELEASED,
    Create,
    Drop,
    EventPolicy,
    Extend,
    role_change_announcement,
)
from sidecar.core.record import HANDOVER_ANNOTATION, SUCCESSOR_ANNOTATION, LeaseRecord
from sidecar.core.routing import NothingToDo, Publish, Refuse, SliceState, Withdraw, publish_action, withdraw_action
from sidecar.core.succession import (
    SUCCESSOR_WINDOW_S,
    Member,
    choose_successor,
    requested_successor,
    reserved_until,
)

# ------------------------------------------------------------------------ the leader Service slice


def test_first_leader_creates_the_slice_with_only_its_address() -> None:
    assert publish_action(None, 3, "10.0.0.1") == Publish("10.0.0.1", 3, None)


def test_newer_term_replaces_the_address_and_the_older_term_is_refused() -> None:
    old = SliceState(3, ("10.0.0.1",), "7")
    assert publish_action(old, 4, "10.0.0.2") == Publish("10.0.0.2", 4, "7")
    newer = SliceState(4, ("10.0.0.2",), "8")
    assert publish_action(newer, 3, "10.0.0.1") == Refuse(4)
    assert withdraw_action(newer, 3, "10.0.0.1") == Refuse(4)


def test_publish_is_idempotent_and_repairs_an_edited_slice() -> None:
    assert publish_action(SliceState(4, ("10.0.0.2",), "8"), 4, "10.0.0.2") == NothingToDo()
    tampered = SliceState(4, ("10.0.0.2", "10.0.0.9"), "9")
    assert publish_action(tampered, 4, "10.0.0.2") == Publish("10.0.0.2", 4, "9")
    unfenced = SliceState(None, ("10.0.0.9",), "10")
    assert publish_action(unfenced, 1, "10.0.0.2") == Publish("10.0.0.2", 1, "10")


def test_withdraw_only_empties_the_slice_of_its_own_term() -> None:
    mine = SliceState(5, ("10.0.0.1",), "11")
    assert withdraw_action(mine, 5, "10.0.0.1") == Withdraw(5, "11")
    assert withdraw_action(SliceState(5, (), "12"), 5, "10.0.0.1") == NothingToDo()
    assert withdraw_action(None, 5, "10.0.0.1") == NothingToDo()
    # Same token, another address (a same-identity duplicate elsewhere): not ours to empty.
    assert withdraw_action(SliceState(5, ("10.0.0.3",), "13"), 5, "10.0.0.1") == NothingToDo()


# ------------------------------------------------------------------------------------- Events


def test_repeats_of_a_reason_extend_one_series_until_the_window_ends() -> None:
    policy = EventPolicy(burst=10, refill_s=1, series_window_s=60)
    assert policy.decide(LOST_LEADERSHIP, 0) == Create(LOST_LEADERSHIP)
    policy.created(LOST_LEADERSHIP, "e1", 0)
    assert policy.decide(LOST_LEADERSHIP, 5) == Extend(LOST_LEADERSHIP, "e1", 2)
    assert policy.decide(LOST_LEADERSHIP, 6) == Extend(LOST_LEADERSHIP, "e1", 3)
    assert policy.decide(BECAME_LEADER, 6) == Create(BECAME_LEADER)  # another reason, its own series
    assert policy.decide(LOST_LEADERSHIP, 61) == Create(LOST_LEADERSHIP)


def test_a_failed_send_opens_a_new_series_next_time() -> None:
    policy = EventPolicy()
    policy.decide(RELEASED, 0)
    policy.created(RELEASED, "e1", 0)
    assert isinstance(policy.decide(RELEASED, 1), Extend)
    policy.failed(RELEASED)
    assert policy.decide(RELEASED, 2) == Create(RELEASED)


def test_token_bucket_drops_a_storm_and_refills_at_its_rate() -> None:
    policy = EventPolicy(burst=3, refill_s=10, series_window_s=600)
    decisions = [policy.decide(LOST_LEADERSHIP, 0.001 * i) for i in range(100)]
    assert sum(not isinstance(d, Drop) for d in decisions) == 3
    assert policy.dropped == 97
    assert isinstance(policy.decide(LOST_LEADERSHIP, 9.0), Drop)  # 0.9 of a token so far
    assert not isinstance(policy.decide(LOST_LEADERSHIP, 10.5), Drop)
    # A long quiet spell refills to the burst, no further.
    sent = [policy.decide(HANDOVER_REQUESTED, 10_000 + i * 0.001) for i in range(10)]
    assert sum(not isinstance(d, Drop) for d in sent) == 3


def test_role_changes_map_to_reasons() -> None:
    assert role_change_announcement(False, True, "a", 7, None).reason == BECAME_LEADER
    assert role_change_announcement(True, False, "a", None, "shutting down").reason == RELEASED
    assert role_change_announcement(True, False, "a", None, "handed over to b").reason == RELEASED
    lost = role_change_announcement(True, False, "a", None, "renew deadline passed")
    assert lost.reason == LOST_LEADERSHIP and lost.type == "Warning" and "renew deadline passed" in lost.note
    assert role_change_announcement(True, True, "a", 7, None) is None
    assert role_change_announcement(False, False, "a", None, None) is None


# ------------------------------------------------------------------------------- succession


def test_requests_name_someone_else() -> None:
    assert requested_successor(LeaseRecord(holder="a", handover_to="b"), "a") == "b"
    assert requested_successor(LeaseRecord(holder="a", preferred_holder="c"), "a") == "c"
    assert requested_successor(LeaseRecord(holder="a", preferred_holder="a"), "a") is None
    assert requested_successor(LeaseRecord(holder="a"), "a") is None


def test_only_the_successor_may_take_a_reserved_release_within_the_window() -> None:
    released = LeaseRecord(holder="", duration_s=1, successor="b")
    assert reserved_until(released, "b", 100.0) is None
    assert reserved_until(released, "c", 100.0) == 100.0 + SUCCESSOR_WINDOW_S
    assert reserved_until(LeaseRecord(holder="", duration_s=1), "c", 100.0) is None
    # Kubernetes' coordinator's preferredHolder is honoured the same way.
    assert reserved_until(LeaseRecord(holder="", preferred_holder="b"), "c", 5.0) == 5.0 + SUCCESSOR_WINDOW_S


def test_successor_annotations_round_trip_and_are_absent_when_unset() -> None:
    record = LeaseRecord(holder="", duration_s=1, fencing_token=4, successor="b", handover_to="",
                         preferred_holder="b", strategy="OldestEmulationVersion")
    lease = {"metadata": {"annotations": record.annotations()}, "spec": record.to_spec()}
    assert lease["metadata"]["annotations"][SUCCESSOR_ANNOTATION] == "b"
    assert HANDOVER_ANNOTATION not in lease["metadata"]["annotations"]
    assert lease["spec"]["preferredHolder"] == "b"
    assert LeaseRecord.from_lease(lease) == record
    assert "preferredHolder" not in LeaseRecord(holder="a").to_spec()


def test_successor_is_the_longest_known_live_ready_standby() -> None:
    members = [Member("me", True, 0.0), Member("young", True, 50.0), Member("old", True, 10.0),
               Member("dead", False, 1.0), Member("unready", True, 2.0, ready=False),
               Member("leaving", True, 3.0, terminating=True)]
    assert choose_successor(members, "me") == "old"
    assert choose_successor([Member("me", True, 0.0)], "me") is None
    assert choose_successor([], "me") is None


def test_a_replaced_pod_prefers_the_new_revision() -> None:
    members = [Member("old-1", True, 1.0, revision="aaa"), Member("new-1", True, 90.0, revision="bbb"),
               Member("new-2", True, 95.0, revision="bbb")]
    assert choose_successor(members, "old-0", own_revision="aaa", replacing_self=True) == "new-1"
    assert choose_successor(members, "old-0", own_revision="aaa", replacing_self=False) == "old-1"
    # No pod of another revision: the longest-known of the rest.
    assert choose_successor(members[:1], "old-0", own_revision="aaa", replacing_self=True) == "old-1"
