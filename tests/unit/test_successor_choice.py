"""Issue 17 item 5 (and item 10's pruning): the successor is chosen from what the members view
knows now: app alive, not sitting out, not terminating. Fake clock, no server."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.core.config import ElectionConfig
from sidecar.core.election import Elector
from sidecar.core.liveness import AppLiveness
from sidecar.core.members import MemberRecord, MemberTable
from sidecar.engine.members import MemberPresence
from sidecar.engine.status import StatusBoard
from sidecar.wiring.leader_parts import SuccessorView
from tests.unit.test_heartbeat import FakeClock
from tests.unit.test_member_presence import SLOW, RecordingStore, until

CONFIG = ElectionConfig(lease_ttl_s=10, renewal_interval_s=2, renew_deadline_s=6, heartbeat_interval_s=1,
                        heartbeat_ttl_s=3, failover_timeout_s=20)


def row(identity: str, **overrides: Any) -> dict[str, Any]:
    base = {"identity": identity, "role": "standby", "alive": True, "info": {},
            "app_heartbeat_at": "2026-01-01T00:00:00.000000Z", "app_alive": True, "terminating": False,
            "sitting_out": False, "observed_at": "2026-01-01T00:00:00.000000Z", "lease": f"work-member-{identity}"}
    return {**base, **overrides}


def choose(rows: list[dict[str, Any]], app_gated: bool = True) -> str | None:
    clock = FakeClock()
    elector = Elector("leader", CONFIG)
    SuccessorView(elector, clock, lambda now: rows, app_gated=app_gated).on_snapshot({})
    return elector.choose_successor(replacing_self=True)


def test_a_member_whose_app_fell_silent_is_not_chosen() -> None:
    # Its app heartbeated once (so app_heartbeat_at is set) but its record says it is dead now.
    assert choose([row("a", app_alive=False), row("b")]) == "b"
    assert choose([row("a", app_alive=False)]) is None


def test_a_terminating_member_is_not_chosen() -> None:
    assert choose([row("a", terminating=True), row("b")]) == "b"
    assert choose([row("a", terminating=True)]) is None


def test_a_member_sitting_out_a_resign_is_not_chosen() -> None:
    assert choose([row("a", sitting_out=True), row("b")]) == "b"
    assert choose([row("a", sitting_out=True)]) is None


def test_without_an_app_ttl_the_app_is_not_consulted() -> None:
    assert choose([row("a", app_alive=None, app_heartbeat_at=None)], app_gated=False) == "a"
    assert choose([row("a", app_alive=None, terminating=True)], app_gated=False) is None


def test_a_release_with_no_eligible_member_is_open_to_all() -> None:
    clock = FakeClock()
    elector = Elector("leader", CONFIG)
    SuccessorView(elector, clock, lambda now: [row("a", app_alive=False), row("b", terminating=True)],
                  app_gated=True).on_snapshot({})
    assert elector.choose_successor(replacing_self=True) is None
    assert elector.choose_successor() is None


def test_first_seen_forgets_members_that_left() -> None:
    clock = FakeClock()
    elector = Elector("leader", CONFIG)
    rows = [row(f"pod-{i}") for i in range(50)]
    view = SuccessorView(elector, clock, lambda now: rows)
    view.on_snapshot({})
    assert len(view._first_seen) == 50
    rows = [row("pod-new")]
    view.on_snapshot({})
    assert set(view._first_seen) == {"pod-new"}


def test_the_member_record_carries_terminating_and_sitting_out() -> None:
    record = MemberRecord("a", "standby", 3, {}, terminating=True, sitting_out=True)
    lease = record.to_lease("work-member-a", "ns", "work")
    lease["metadata"]["resourceVersion"] = "7"
    back = MemberRecord.from_lease(lease)
    assert back.terminating is True and back.sitting_out is True
    assert MemberRecord.from_lease(MemberRecord("a", "standby", 3, {}).to_lease("n", "ns", "work")).terminating is False
    table = MemberTable()
    table.observe(0.0, FakeClock().now().wall, "work-member-a", back, "7")
    assert table.rows(0.0)[0]["terminating"] is True and table.rows(0.0)[0]["sitting_out"] is True


async def test_the_stop_signal_is_written_to_the_member_record_at_once() -> None:
    clock = FakeClock()
    app = AppLiveness(ttl_s=SLOW.heartbeat_ttl_s)
    board = StatusBoard(Elector("a", SLOW), clock, "ns/work", 3, app)
    store = RecordingStore()
    presence = MemberPresence(store, board, clock, "a", "work", SLOW)
    renewing = asyncio.create_task(presence.renew_forever())
    try:
        await until(lambda: len(store.puts) == 1)
        assert store.puts[0].terminating is False
        presence.begin_terminating()
        await until(lambda: len(store.puts) == 2)  # far sooner than the 300 s interval
        assert store.puts[1].terminating is True
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)


async def test_a_resign_is_written_to_the_member_record() -> None:
    clock = FakeClock()
    app = AppLiveness(ttl_s=SLOW.heartbeat_ttl_s)
    app.beat(clock.mono, clock.now().wall)
    board = StatusBoard(Elector("a", SLOW), clock, "ns/work", 3, app)
    store = RecordingStore()
    presence = MemberPresence(store, board, clock, "a", "work", SLOW)
    renewing = asyncio.create_task(presence.renew_forever())
    try:
        await until(lambda: len(store.puts) == 1)
        assert store.puts[0].sitting_out is False
        app.resign(clock.mono, 60)
        board.beat()  # the next heartbeat tells the listeners
        await until(lambda: len(store.puts) == 2)
        assert store.puts[1].sitting_out is True
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
