"""The wire format: client-go's MicroTime, and odd Lease contents that must not crash anything."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.record import LeaseRecord, format_microtime, parse_microtime


def test_microtime_is_utc_with_six_digits() -> None:
    moment = datetime(2026, 3, 4, 5, 6, 7, 80, tzinfo=timezone(timedelta(hours=2)))
    assert format_microtime(moment) == "2026-03-04T03:06:07.000080Z"


def test_parse_accepts_what_other_writers_send() -> None:
    expected = datetime(2026, 3, 4, 3, 6, 7, 123456, tzinfo=UTC)
    for text in ("2026-03-04T03:06:07.123456Z", "2026-03-04T03:06:07.123456789Z", "2026-03-04T05:06:07.123456+02:00"):
        assert parse_microtime(text) == expected, text
    assert parse_microtime("2026-03-04T03:06:07Z") == expected.replace(microsecond=0)
    for junk in (None, 5, "", "yesterday", "2026-13-40T99:99:99Z"):
        assert parse_microtime(junk) is None


def test_odd_lease_contents_are_tolerated() -> None:
    odd = {"metadata": {"annotations": {"lease-sidecar.io/fencing-token": "-3"}},
           "spec": {"holderIdentity": 7, "leaseDurationSeconds": "15", "leaseTransitions": -2,
                    "renewTime": "garbage"}}
    assert LeaseRecord.from_lease(odd) == LeaseRecord()
    assert LeaseRecord.from_lease({}) == LeaseRecord()
    assert LeaseRecord.from_lease({"spec": None, "metadata": None}).is_free


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                                        max_size=3), max_leaves=10)


@given(spec=st.dictionaries(st.sampled_from(["holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime",
                                             "leaseTransitions"]), json_values),
       annotations=st.dictionaries(st.just("lease-sidecar.io/fencing-token"), json_values))
def test_any_json_parses_to_a_record(spec: dict, annotations: dict) -> None:
    record = LeaseRecord.from_lease({"spec": spec, "metadata": {"annotations": annotations}})
    assert (record.duration_s is None or record.duration_s > 0) and record.transitions >= 0
    assert record.fencing_token is None or record.fencing_token >= 0
    LeaseRecord.from_lease({"spec": record.to_spec()})


def test_round_trip() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    record = LeaseRecord("x", 10, now, now, 4, 12)
    lease = {"spec": record.to_spec(), "metadata": {"annotations": record.annotations()}}
    assert LeaseRecord.from_lease(lease) == record
