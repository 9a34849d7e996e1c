"""The deadline the app was told binds the release (election.py P1, P2; review finding S1), on a
fake clock: no release, which lets another candidate take the Lease at once, is written before
every deadline the status board published has passed, unless the app resigned."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sidecar.core.config import ElectionConfig
from sidecar.core.election import BeatRole, Done, Elector, Moment, Read, Wait, Write
from sidecar.core.liveness import AppLiveness
from sidecar.engine.status import StatusBoard
from tests.unit.test_election import CONFIG, Store, at, lead

APP_TTL_S = 3.0


class FakeClock:
    def __init__(self) -> None:
        self.mono = 0.0

    def now(self) -> Moment:
        return Moment(self.mono, datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.mono))


class App:
    """What the app hears: every deadline the status board (/leader, SSE, status.json) showed."""

    def __init__(self, elector: Elector, gate: AppLiveness | None = None) -> None:
        self.clock = FakeClock()
        self.board = StatusBoard(elector, self.clock, "default/work", 3, app=gate,
                                 draining=lambda: elector.draining(self.clock.mono))  # as wired
        self.told_until_mono = float("-inf")

    def reads(self, t: float) -> dict[str, object]:
        self.clock.mono = t
        body = self.board.snapshot()
        if body["valid_until_monotonic"] is not None:
            self.told_until_mono = max(self.told_until_mono, body["valid_until_monotonic"])
        return body


def run_until_release(elector: Elector, store: Store, app: App, t: float, until: float = 60.0) -> tuple[float, Write]:
    """The driver's loop on the fake clock: the board publishes before every action (as
    BeatHeartbeat._elect does), reads and writes complete at once. Returns the release and when."""
    while t < until:
        app.reads(t)
        action = elector.next_action(at(t))
        if isinstance(action, Write):
            if action.kind == "release":
                return t, action
            store.apply(elector, action, at(t), at(t))
        elif isinstance(action, Read):
            elector.observe(at(t), store.current)
        elif isinstance(action, Wait):
            t = max(action.until_mono, t + 0.001)
        else:
            raise AssertionError(f"no release before {action} at {t}")
    raise AssertionError(f"no release by {until}")


def renewed_at_2(elector: Elector, store: Store, app: App) -> None:
    app.reads(0)
    renew = elector.next_action(at(2))
    assert isinstance(renew, Write) and renew.kind == "renew"
    store.apply(elector, renew, at(2), at(2))
    assert app.reads(2.5)["valid_until_monotonic"] is not None


def test_the_app_ttl_lapse_releases_no_earlier_than_the_deadline_the_app_was_told() -> None:
    store, gate = Store(), AppLiveness(APP_TTL_S)
    elector = Elector("a", CONFIG, gate=gate)
    app = App(elector, gate)
    gate.beat(0, at(0).wall)
    lead(elector, store, 0)
    gate.beat(1.5, at(1.5).wall)  # the app's last heartbeat: its TTL lapses at 4.5
    renewed_at_2(elector, store, app)  # renew deadline 8
    # P1: what the app is told never passes its own lapse, so the lapse's release keeps it.
    assert app.told_until_mono == 4.5
    released_at, release = run_until_release(elector, store, app, 2.5)
    assert released_at >= app.told_until_mono
    assert released_at == 4.5 and release.record.holder == ""  # and not a moment later: no extra wait
    assert "app heartbeat missed" in (elector.view(4.5).term_end.reason or "")


def test_a_heartbeat_moves_the_told_deadline_without_a_new_version() -> None:
    store, gate = Store(), AppLiveness(APP_TTL_S)
    elector = Elector("a", CONFIG, gate=gate)
    app = App(elector, gate)
    gate.beat(0, at(0).wall)
    lead(elector, store, 0)
    first = app.reads(1)
    gate.beat(1, at(1).wall)
    second = app.reads(1)
    assert (first["valid_until_monotonic"], second["valid_until_monotonic"]) == (3, 4)
    assert second["version"] == first["version"] and app.board.renewals == 1


def test_a_drain_that_times_out_releases_no_earlier_than_the_deadline_told_before_it() -> None:
    store, elector = Store(), Elector("a", replace(CONFIG, handover_drain_timeout_s=2.0))
    app = App(elector)
    lead(elector, store, 0)
    renewed_at_2(elector, store, app)
    assert app.told_until_mono == 8  # renewed at 2, renew deadline 6
    elector.close(at(3))  # SIGTERM; the app never resigns
    body = app.reads(3)
    assert body["draining"] is True and body["valid_until_monotonic"] == 8
    released_at, _ = run_until_release(elector, store, app, 3)
    # The timeout (3 + 2) came first; the drain lasts until what the app was already told.
    assert released_at >= app.told_until_mono == 8
    assert released_at == 8 and elector.view(8).term_end.reason == "shutting down"


def test_while_draining_the_told_deadline_is_the_drains_end() -> None:
    store, elector = Store(), Elector("a", replace(CONFIG, handover_drain_timeout_s=5.0))
    app = App(elector)
    lead(elector, store, 0)
    app.reads(0.5)  # told 6
    elector.close(at(1))  # the drain runs until 6 = 1 + 5
    renew = elector.next_action(at(2))
    assert isinstance(renew, Write) and renew.kind == "renew"
    store.apply(elector, renew, at(2), at(2))  # renew deadline 8, but the drain ends at 6
    assert app.reads(2)["valid_until_monotonic"] == 6
    assert elector.view(5.99).role is BeatRole.LEADER and elector.view(6).role is not BeatRole.LEADER
    assert elector.view(6).term_end.reason == "shutting down"  # even before the Elector acts on it
    released_at, _ = run_until_release(elector, store, app, 2)
    assert released_at == 6 == app.told_until_mono


def test_an_app_that_acknowledges_the_drain_is_released_at_once() -> None:
    store, elector = Store(), Elector("a", replace(CONFIG, handover_drain_timeout_s=2.0))
    app = App(elector)
    lead(elector, store, 0)
    renewed_at_2(elector, store, app)
    elector.close(at(3))
    elector.gate.resign(3.5, sit_out_s=0)  # its work is done: it gave the term up itself
    release = elector.next_action(at(3.5))
    assert isinstance(release, Write) and release.kind == "release"  # one write, before the 8 it was told
    store.apply(elector, release, at(3.5), at(3.5))
    assert isinstance(elector.next_action(at(3.6)), Done)


def test_close_without_a_drain_releases_no_earlier_than_the_deadline_the_app_was_told() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    app = App(elector)
    lead(elector, store, 0)
    renewed_at_2(elector, store, app)
    elector.close(at(3))  # SIGTERM
    assert app.reads(3)["role"] == "standby"  # standby at once, as before
    held = elector.next_action(at(3))
    assert isinstance(held, Wait) and held.until_mono == 8 and held.holds_release
    assert store.current.record.holder == "a"  # nobody can take it: no release, and F1 fences a
    released_at, release = run_until_release(elector, store, app, 3)
    assert released_at >= app.told_until_mono == 8
    store.apply(elector, release, at(released_at), at(released_at))
    assert isinstance(elector.next_action(at(released_at)), Done)


def test_an_app_that_resigns_after_the_sigterm_cuts_the_wait_short() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    app = App(elector)
    lead(elector, store, 0)
    renewed_at_2(elector, store, app)
    elector.close(at(3))
    assert isinstance(elector.next_action(at(3)), Wait)
    elector.gate.resign(4, sit_out_s=0)  # the app's SIGTERM handler, a moment after the sidecar's
    release = elector.next_action(at(4))
    assert isinstance(release, Write) and release.kind == "release"


def test_an_app_that_resigned_before_the_sigterm_is_released_at_once() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    app = App(elector)
    lead(elector, store, 0)
    renewed_at_2(elector, store, app)
    elector.gate.resign(3, sit_out_s=0)
    release = elector.next_action(at(3))
    assert isinstance(release, Write) and release.kind == "release"


def test_a_hand_over_request_without_a_drain_releases_no_earlier_than_the_told_deadline() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    app = App(elector)
    lead(elector, store, 0)
    renewed_at_2(elector, store, app)
    assert elector.request_handover("b", at(3))
    assert app.reads(3)["role"] == "standby"
    released_at, release = run_until_release(elector, store, app, 3)
    assert released_at >= app.told_until_mono == 8 and release.record.successor == "b"


def test_a_hand_over_written_into_the_record_releases_no_earlier_than_the_told_deadline() -> None:
    store, elector = Store(), Elector("a", CONFIG)
    app = App(elector)
    lead(elector, store, 0)
    renewed_at_2(elector, store, app)
    store.put(replace(store.current.record, handover_to="b"))  # `lease-sidecar handover --to b`
    elector.observe(at(3), store.current)
    released_at, release = run_until_release(elector, store, app, 3)
    assert released_at >= app.told_until_mono == 8 and release.record.successor == "b"


def test_a_view_nobody_published_binds_no_release() -> None:
    # The keyed locks' Electors: their owners are told K2's deadline by the lock engine instead.
    store, elector = Store(), Elector("a", CONFIG)
    lead(elector, store, 0)
    assert elector.view(2.5).valid_until_mono == 6
    elector.close(at(3))
    release = elector.next_action(at(3))
    assert isinstance(release, Write) and release.kind == "release"



class ToldElsewhere(Elector):
    """An Elector whose terms were told a deadline of another kind (as keyed locks' K7 is): it
    extends the one hook every release path asks, and patches nothing else."""

    def __init__(self, told_until_mono: float, gate: AppLiveness | None = None,
                 config: ElectionConfig = CONFIG) -> None:
        super().__init__("a", config, gate=gate)
        self.told_until_mono = told_until_mono

    def held_release(self, now_mono: float) -> Wait | None:
        held = super().held_release(now_mono)
        if held is None and now_mono < self.told_until_mono:
            return Wait(self.told_until_mono, "told elsewhere", holds_release=True)
        return held


def end_the_term(how: str, elector: ToldElsewhere, store: Store) -> None:
    """At 1: each way a term of the election ends with a release owed."""
    if how == "close":
        elector.close(at(1))
    elif how == "local hand-over request":
        assert elector.request_handover("b", at(1))
    elif how == "hand-over written into the record":
        store.put(replace(store.current.record, handover_to="b"))
        elector.observe(at(1), store.current)
    elif how != "app lapse":  # the app's TTL lapses at 1 by itself
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["close", "local hand-over request", "hand-over written into the record",
                                 "app lapse"])
def test_every_release_path_asks_the_held_release_hook_and_a_held_release_is_no_attempt(how: str) -> None:
    gate = AppLiveness(ttl_s=1.0) if how == "app lapse" else AppLiveness()
    gate.beat(0, at(0).wall)
    store, elector = Store(), ToldElsewhere(told_until_mono=5.0, gate=gate)
    lead(elector, store, 0)
    end_the_term(how, elector, store)
    # Far more decisions than Elector.MAX_RELEASE_ATTEMPTS while it is held: none is a write, and
    # none uses up the attempts (a close would otherwise give up and never release).
    for t in (1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 4.99):
        held = elector.next_action(at(t))
        assert isinstance(held, Wait) and held.until_mono == 5.0 and held.holds_release, (t, held)
        assert held.reason == "told elsewhere" and not elector.is_leader(t)
    release = elector.next_action(at(5.0))
    assert isinstance(release, Write) and release.kind == "release"
    store.apply(elector, release, at(5.0), at(5.0))
    assert store.current.record.holder == ""


def test_a_drain_lasts_until_the_held_release_hooks_deadline() -> None:
    store = Store()
    elector = ToldElsewhere(told_until_mono=5.0, config=replace(CONFIG, handover_drain_timeout_s=1.0))
    lead(elector, store, 0)
    elector.close(at(1))  # the drain's timeout (1 + 1) comes first; the hook's deadline bounds it (D1)
    assert elector.draining(4.9) and elector.view(4.9).valid_until_mono == 5.0
    assert not elector.is_leader(5.0)
