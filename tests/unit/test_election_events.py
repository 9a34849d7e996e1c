"""Events say what happened (issue 17 item 7): a step-down is announced with the end reason of
the term it ended, read from the Elector's view, on a fake clock; a lost term is a Warning."""

from __future__ import annotations

from sidecar.core.announce import LOST_LEADERSHIP, RELEASED, Announcement, own_end_reason
from sidecar.core.election import Elector, TermEnd
from sidecar.engine.status import StatusBoard
from sidecar.kube.events import RoleAnnouncer
from tests.unit.test_election import CONFIG, Store, at, lead
from tests.unit.test_heartbeat import FakeClock


class Sink:
    """Stands in for LeaseEvents: keeps what would be sent."""

    def __init__(self) -> None:
        self.sent: list[Announcement] = []

    def announce(self, announcement: Announcement) -> None:
        self.sent.append(announcement)


def test_a_term_lost_at_its_deadline_is_a_warning_even_after_a_voluntary_release() -> None:
    clock, store, elector, sink = FakeClock(), Store(), Elector("a", CONFIG), Sink()
    clock.mono = 0
    board = StatusBoard(elector, clock, "ns/lease", 3)
    board.subscribe(RoleAnnouncer(sink, lambda: elector.view(clock.mono).term_end).on_snapshot)  # type: ignore[arg-type]
    lead(elector, store, 0)
    board.snapshot()
    # Term 1 is resigned (a voluntary end: Released) ...
    elector.gate.resign(1, sit_out_s=0)
    clock.mono = 1
    board.snapshot()
    release = elector.next_action(at(1))
    store.apply(elector, release, at(1), at(1))
    # ... term 2 begins, and is lost at its deadline before the Elector has acted on it.
    acquire = elector.next_action(at(1.1))
    store.apply(elector, acquire, at(1.1), at(1.1))
    clock.mono = 1.1
    board.snapshot()
    assert elector.last_loss_reason == "resigned"  # what the announcer used to read
    clock.mono = 1.1 + CONFIG.renew_deadline
    board.snapshot()
    reasons = [(a.reason, a.type) for a in sink.sent]
    assert reasons == [("BecameLeader", "Normal"), (RELEASED, "Normal"), ("BecameLeader", "Normal"),
                       (LOST_LEADERSHIP, "Warning")], reasons
    assert "renew deadline passed" in sink.sent[-1].note


def test_only_the_ended_terms_own_reason_is_used() -> None:
    assert own_end_reason(TermEnd(7, "lease deleted"), 7) == "lease deleted"
    assert own_end_reason(TermEnd(6, "resigned"), 7) is None
    assert own_end_reason(None, 7) is None
