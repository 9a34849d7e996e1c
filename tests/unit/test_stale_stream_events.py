"""Observations older (by integer resourceVersion) than one already seen are stale and must not
move the view back. Seen in real pods: a resigning leader's read, answered before the successor's
acquisition that its watch then delivered first, put the release back in its view; named
successor in the next hand-over, it judged that release "a holder cleared without a release" and
waited a TTL instead of taking it."""

from __future__ import annotations

from sidecar.core.election import Elector
from sidecar.core.lock import Versioned
from sidecar.core.record import LeaseRecord
from tests.unit.test_election import CONFIG, EPOCH, at


def held_by(holder: str, token: int) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration_s=10, acquire_time=EPOCH, renew_time=EPOCH, fencing_token=token)


def test_a_stream_event_older_than_a_read_is_ignored() -> None:
    elector = Elector("a", CONFIG)
    elector.observe(at(0), Versioned(held_by("b", 5), "110"))  # the read after a dropped list
    released = LeaseRecord(holder="", duration_s=1, acquire_time=EPOCH, renew_time=EPOCH, fencing_token=4)
    elector.observe(at(0.1), Versioned(released, "105"), from_stream=True)  # the stream catching up
    assert elector.view(0.1).holder == "b"
    elector.observe(at(0.2), None, from_stream=True, absent_version="108")  # an older deletion, too
    assert elector.view(0.2).holder == "b"
    elector.observe(at(0.3), Versioned(held_by("c", 6), "120"), from_stream=True)  # newer: applied
    assert elector.view(0.3).holder == "c"


def test_a_read_answered_before_a_newer_stream_event_is_ignored_once() -> None:
    # Our release's read was answered before the successor's acquisition, which the stream
    # delivered first: the read must not move the view back to the release.
    elector = Elector("a", CONFIG)
    elector.observe(at(0), Versioned(held_by("b", 5), "110"), from_stream=True)
    released = LeaseRecord(holder="", duration_s=1, acquire_time=EPOCH, renew_time=EPOCH, fencing_token=4)
    elector.observe(at(0.1), Versioned(released, "105"))
    assert elector.view(0.1).holder == "b"


def test_two_older_reads_in_a_row_are_believed_the_store_went_back() -> None:
    # After an etcd restore rewound the versions, reads (and lists) are all older than what was
    # seen: the second in a row is believed, and the stream from it is followed again.
    elector = Elector("a", CONFIG)
    elector.observe(at(0), Versioned(held_by("b", 5), "900"))
    elector.observe(at(1), Versioned(held_by("c", 6), "100"))
    assert elector.view(1).holder == "b"
    elector.observe(at(1.5), Versioned(held_by("c", 6), "100"))
    assert elector.view(1.5).holder == "c"
    elector.observe(at(2), Versioned(held_by("d", 7), "101"), from_stream=True)
    assert elector.view(2).holder == "d"
