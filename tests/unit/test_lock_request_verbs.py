"""Keyed locks' Lease requests reach the election's request histogram under verbs of their own,
so the renewal-latency alert (verb="update") sees the election's renewals only."""

from __future__ import annotations

from sidecar.wiring.lock_parts import lock_request_observer


def test_lock_requests_are_prefixed_in_the_election_histogram() -> None:
    lock_calls: list[tuple[str, str, float]] = []
    election_calls: list[tuple[str, str, float]] = []
    observe = lock_request_observer(lambda *call: lock_calls.append(call),
                                    lambda *call: election_calls.append(call))
    observe("update", "timeout", 4.0)
    observe("create", "409", 0.01)
    assert lock_calls == [("update", "timeout", 4.0), ("create", "409", 0.01)]
    assert election_calls == [("lock_update", "timeout", 4.0), ("lock_create", "409", 0.01)]


def test_without_an_election_histogram_only_the_locks_count() -> None:
    lock_calls: list[tuple[str, str, float]] = []
    lock_request_observer(lambda *call: lock_calls.append(call), None)("get", "ok", 0.002)
    assert lock_calls == [("get", "ok", 0.002)]
