"""Hand-over to a named successor in the state machine, on a fake clock: one acquisition write per
hand-over, nobody else writes during the successor window, anyone may after it."""

from __future__ import annotations

from dataclasses import replace

from sidecar.core.election import BeatRole, Elector, Moment, Wait, Write
from sidecar.core.record import LeaseRecord
from sidecar.core.succession import SUCCESSOR_WINDOW_S, Member
from tests.unit.test_election import CONFIG, Store, at, lead


def settle(electors: list[Elector], store: Store, t: float) -> list[Write]:
    """Every elector observes the store and takes its next action at `t`; writes are applied in
    order (a stale one conflicts). Returns the writes attempted."""
    for elector in electors:
        elector.observe(at(t), store.current)
    writes = []
    for elector in electors:
        action = elector.next_action(at(t))
        if isinstance(action, Write):
            writes.append(action)
            store.apply(elector, action, at(t), at(t))
    return writes


def standbys(count: int, store: Store, t: float) -> list[Elector]:
    group = [Elector(f"s{i}", CONFIG) for i in range(count)]
    for elector in group:
        elector.observe(at(t), store.current)
    return group


def test_local_request_releases_to_the_successor_who_alone_takes_it() -> None:
    store, leader = Store(), Elector("a", CONFIG)
    lead(leader, store, 0)
    others = standbys(29, store, 0.5)
    assert not leader.request_handover("a", at(1)) and not others[0].request_handover("s1", at(1))
    assert leader.request_handover("s7", at(1))
    assert leader.view(1).role is BeatRole.STANDBY  # at once: the HTTP answer already says standby

    release = leader.next_action(at(1))
    assert isinstance(release, Write) and release.kind == "release"
    assert leader.view(1).role is BeatRole.STANDBY  # standby before the release is sent
    assert release.record.successor == "s7" and release.record.holder == ""
    assert release.record.duration_s == 1 and release.record.fencing_token == 1
    store.apply(leader, release, at(1), at(1))
    assert leader.last_loss_reason == "handing over to s7"

    writes = settle([*others, leader], store, 1.05)
    assert [(w.kind, w.record.holder) for w in writes] == [("acquire", "s7")]  # one write, no 409
    assert others[7].view(1.05).role is BeatRole.LEADER
    assert store.current.record.successor == "" and store.current.record.fencing_token > 1
    assert leader.view(1.05).role is BeatRole.STANDBY and isinstance(leader.next_action(at(1.05)), Wait)


def test_nobody_else_writes_during_the_window_then_anyone_may() -> None:
    store, leader = Store(), Elector("a", CONFIG)
    lead(leader, store, 0)
    others = standbys(5, store, 0.5)
    leader.request_handover("gone", at(1))  # a successor that never comes
    store.apply(leader, leader.next_action(at(1)), at(1), at(1))
    for elector in others:
        elector.observe(at(1.01), store.current)
        assert elector.next_action(at(1.01)) == Wait(1.01 + SUCCESSOR_WINDOW_S)
    writes = settle(others, store, 1.01 + SUCCESSOR_WINDOW_S)
    assert writes[0].kind == "acquire" and store.current.record.holder == "s0"
    assert len([e for e in others if e.view(4).role is BeatRole.LEADER]) == 1


def test_request_through_the_lease_annotation_and_preferred_holder() -> None:
    for field in ("handover_to", "preferred_holder"):
        store, leader = Store(), Elector("a", CONFIG)
        lead(leader, store, 0)
        # `lease-sidecar handover` (or Kubernetes' coordinator) writes the request into the record.
        store.put(replace(store.current.record, **{field: "b"}))
        leader.observe(at(1), store.current)
        release = leader.next_action(at(1))
        assert isinstance(release, Write) and release.kind == "release", field
        assert release.record.successor == "b"
        assert release.record.handover_to == "" and release.record.preferred_holder == ""  # answered


def test_a_request_naming_the_holder_is_ignored() -> None:
    store, leader = Store(), Elector("a", CONFIG)
    lead(leader, store, 0)
    store.put(replace(store.current.record, handover_to="a"))
    leader.observe(at(1), store.current)
    assert leader.next_action(at(1)) == Wait(2)
    assert leader.view(1).role is BeatRole.LEADER


def test_shutdown_names_the_longest_known_standby_of_the_new_revision() -> None:
    store, leader = Store(), Elector("web-aaa-1", CONFIG)
    lead(leader, store, 0)
    leader.own_revision = "aaa"
    leader.members = [Member("web-aaa-2", True, 1.0, revision="aaa"), Member("web-bbb-1", True, 40.0, revision="bbb"),
                      Member("web-bbb-2", True, 45.0, revision="bbb"), Member("web-bbb-0", False, 2.0, revision="bbb")]
    leader.close(at(50))
    release = leader.next_action(at(50))
    assert isinstance(release, Write) and release.record.successor == "web-bbb-1"
    store.apply(leader, release, at(50), at(50))
    assert leader.view(50).role is BeatRole.UNKNOWN  # closed: done, not standby


def test_shutdown_without_members_names_nobody() -> None:
    store, leader = Store(), Elector("a", CONFIG)
    lead(leader, store, 0)
    leader.close(at(1))
    release = leader.next_action(at(1))
    assert isinstance(release, Write) and release.record.successor == ""
    store.apply(leader, release, at(1), at(1))
    writes = settle(standbys(3, store, 1.0), store, 1.01)
    assert [w.kind for w in writes] == ["acquire"] * 3  # the old race: one wins, two conflict


def test_acquisition_keeps_the_coordinated_strategy() -> None:
    store, elector = Store(), Elector("b", CONFIG)
    store.put(LeaseRecord("", 1, at(0).wall, at(0).wall, 2, 5, strategy="OldestEmulationVersion"))
    elector.observe(at(0), store.current)
    action = elector.next_action(at(0))
    assert isinstance(action, Write) and action.record.strategy == "OldestEmulationVersion"


def test_a_resign_names_a_successor_too() -> None:
    from sidecar.core.liveness import AppLiveness

    gate = AppLiveness(3.0)
    store, leader = Store(), Elector("web-aaa-1", CONFIG, gate=gate)
    gate.beat(0, at(0).wall)
    lead(leader, store, 0)
    leader.own_revision = "aaa"
    leader.members = [Member("web-aaa-2", True, 1.0, revision="aaa"), Member("web-bbb-1", True, 9.0, revision="bbb")]
    gate.resign(1, sit_out_s=5)  # the app's SIGTERM handler, as its pod is replaced
    release = leader.next_action(at(1))
    assert isinstance(release, Write) and release.kind == "release"
    assert release.record.successor == "web-bbb-1"


def test_successor_view_skips_members_whose_app_is_not_alive() -> None:
    from sidecar.wiring.leader_parts import SuccessorView

    class Clock:
        def now(self) -> Moment:
            return at(7)

    rows = [{"identity": "web-bbbbbb1-new01", "alive": True, "role": "standby", "app_heartbeat_at": None,
             "app_alive": False},
            {"identity": "web-bbbbbb1-new02", "alive": True, "role": "standby",
             "app_heartbeat_at": "2026-01-01T00:00:00.000000Z", "app_alive": True},
            {"identity": "web-aaaaaa1-old01", "alive": True, "role": "unknown", "app_heartbeat_at": None}]
    elector = Elector("web-aaaaaa1-old00", CONFIG)
    SuccessorView(elector, Clock(), lambda _now: rows, app_gated=True).on_snapshot({})
    assert [(m.identity, m.ready, m.revision) for m in elector.members] == [
        ("web-bbbbbb1-new01", False, "bbbbbb1"), ("web-bbbbbb1-new02", True, "bbbbbb1"),
        ("web-aaaaaa1-old01", False, "aaaaaa1")]
    elector.own_revision = "aaaaaa1"
    assert elector.choose_successor(replacing_self=True) == "web-bbbbbb1-new02"
    SuccessorView(elector, Clock(), lambda _now: rows, app_gated=False).on_snapshot({})
    assert elector.choose_successor(replacing_self=True) == "web-bbbbbb1-new01"
