"""Term: the deadline from a /leader answer, and which term the running work belongs to."""

from __future__ import annotations

import unittest
from datetime import UTC, datetime, timedelta

from lease_sidecar_client import Term, bind_term, current_term, remaining_s, still_valid


def leader(**fields: object) -> dict[str, object]:
    return {"is_leader": True, "identity": "pod-a", "lease": "ns/app", "fencing_token": 12, "lease_uid": "u1",
            **fields}


class DeadlineFromStatus(unittest.TestCase):
    def test_monotonic_deadline_is_taken_as_is(self) -> None:
        term = Term.from_status(leader(valid_until_monotonic=100.0, valid_for_seconds=5.0), now_monotonic=95.0)
        assert term is not None
        self.assertEqual(term.valid_until_monotonic, 100.0)
        self.assertEqual((term.lease, term.fencing_token, term.lease_uid), ("ns/app", 12, "u1"))

    def test_an_answer_to_a_known_question_is_never_believed_beyond_valid_for(self) -> None:
        # Another clock domain: the sidecar's monotonic deadline means nothing here; the time left
        # counted from when we asked bounds it.
        term = Term.from_status(leader(valid_until_monotonic=10_000.0, valid_for_seconds=5.0),
                                asked_at_monotonic=50.0, now_monotonic=50.1)
        assert term is not None
        self.assertEqual(term.valid_until_monotonic, 55.0)

    def test_valid_for_alone_counts_from_the_question(self) -> None:
        term = Term.from_status(leader(valid_for_seconds=4.0), asked_at_monotonic=20.0, now_monotonic=21.0)
        assert term is not None
        self.assertEqual(term.valid_until_monotonic, 24.0)

    def test_an_old_sidecar_falls_back_to_the_wall_clock(self) -> None:
        wall = (datetime.now(UTC) + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
        term = Term.from_status(leader(valid_until=wall), now_monotonic=1000.0)
        assert term is not None
        self.assertAlmostEqual(term.valid_until_monotonic, 1030.0, delta=2.0)

    def test_a_null_monotonic_deadline_is_no_term(self) -> None:
        self.assertIsNone(Term.from_status(leader(valid_until_monotonic=None, valid_for_seconds=3.0,
                                                  valid_until="2099-01-01T00:00:00Z")))

    def test_standby_garbage_and_missing_token_are_no_term(self) -> None:
        for status in (None, "x", {"is_leader": False}, leader(fencing_token=None, valid_until_monotonic=1.0),
                       leader(fencing_token=True, valid_until_monotonic=1.0), leader()):
            self.assertIsNone(Term.from_status(status), status)  # type: ignore[arg-type]

    def test_remaining_and_validity_by_the_given_clock(self) -> None:
        term = Term("pod-a", "ns/app", 3, valid_until_monotonic=10.0)
        self.assertEqual(term.remaining_s(now=7.5), 2.5)
        self.assertEqual(term.remaining_s(now=11.0), 0.0)
        self.assertTrue(term.is_valid(now=9.99))
        self.assertFalse(term.is_valid(now=10.0))
        self.assertEqual(term.ended_at(now=4.0).valid_until_monotonic, 4.0)
        self.assertEqual(term.ended_at(now=12.0).valid_until_monotonic, 10.0)  # never later

    def test_the_module_helpers_of_sidecar_client(self) -> None:
        status = leader(valid_until_monotonic=50.0, valid_for_seconds=6.0)
        self.assertEqual(remaining_s(status, now_monotonic=44.0), 6.0)
        self.assertFalse(still_valid(status, now_monotonic=50.0))
        self.assertFalse(still_valid({**status, "is_leader": False}, now_monotonic=44.0))


class SameTerm(unittest.TestCase):
    def test_renewed_is_the_same_term_another_token_or_lease_object_is_not(self) -> None:
        term = Term("pod-a", "ns/app", 3, 10.0, "u1")
        self.assertTrue(term.same_term(Term("pod-a", "ns/app", 3, 20.0, "u1")))
        self.assertTrue(term.same_term(Term("pod-a", "ns/app", 3, 20.0, None)))
        self.assertFalse(term.same_term(Term("pod-a", "ns/app", 4, 20.0, "u1")))
        self.assertFalse(term.same_term(Term("pod-a", "ns/app", 3, 20.0, "u2")))
        self.assertFalse(term.same_term(Term("pod-a", "ns/other", 3, 20.0, "u1")))
        self.assertFalse(term.same_term(None))


class CurrentTerm(unittest.TestCase):
    def test_bound_only_inside_the_block_and_follows_the_provider(self) -> None:
        self.assertIsNone(current_term())
        latest = [Term("pod-a", "ns/app", 1, 10.0)]
        with bind_term(lambda: latest[0]):
            self.assertEqual(current_term(), latest[0])
            latest[0] = Term("pod-a", "ns/app", 1, 20.0)
            self.assertEqual(current_term().valid_until_monotonic, 20.0)  # type: ignore[union-attr]
            with bind_term(Term("pod-a", "ns/app", 2, 5.0)):
                self.assertEqual(current_term().fencing_token, 2)  # type: ignore[union-attr]
            self.assertEqual(current_term().fencing_token, 1)  # type: ignore[union-attr]
        self.assertIsNone(current_term())


if __name__ == "__main__":
    unittest.main()
