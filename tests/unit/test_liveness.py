"""The app-liveness gate, the heartbeat body rules and the members table, on a fake clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sidecar.core.config import ConfigError
from sidecar.core.liveness import AppLiveness, check_app_ttl
from sidecar.core.members import (
    ELECTION_LABEL,
    MemberRecord,
    MemberTable,
    election_label_value,
    member_duration_s,
    member_lease_name,
)
from sidecar.publish.app_api import BadBody, parse_heartbeat

WALL = datetime(2026, 1, 1, tzinfo=UTC)


def wall(seconds: float) -> datetime:
    return WALL + timedelta(seconds=seconds)


def test_without_a_ttl_the_app_is_not_consulted() -> None:
    gate = AppLiveness()
    assert gate.allows_leading(0) and gate.next_change_mono(0) is None
    assert gate.view(0).alive is None and gate.view(0).required is False


def test_with_a_ttl_no_campaign_before_the_first_heartbeat_and_none_after_a_miss() -> None:
    gate = AppLiveness(ttl_s=3)
    assert not gate.allows_leading(100)
    assert gate.blocked_reason(100) == "app has not heartbeated yet"
    assert gate.next_change_mono(100) is None  # only a heartbeat can open it
    gate.beat(101, wall(101), {"schedule_count": 2})
    assert gate.allows_leading(101) and gate.allows_leading(103.99)
    assert gate.next_change_mono(102) == 104
    assert not gate.allows_leading(104)  # the TTL is exclusive: at 3 s of silence, step down
    assert "app heartbeat missed" in (gate.blocked_reason(104) or "")
    assert gate.view(104).alive is False and gate.view(104).info == {"schedule_count": 2}
    gate.beat(110, wall(110))  # a fresh heartbeat: campaign again; info kept when none is given
    assert gate.allows_leading(110) and gate.view(110).info == {"schedule_count": 2}
    assert gate.view(110).heartbeats == 2


def test_health_probes_count_only_when_they_pass() -> None:
    gate = AppLiveness(ttl_s=2)
    gate.probe(0, wall(0), ok=False)
    assert not gate.allows_leading(0)
    gate.probe(1, wall(1), ok=True)
    assert gate.allows_leading(1)
    gate.probe(2, wall(2), ok=False)
    assert gate.allows_leading(2.9) and not gate.allows_leading(3)


def test_resign_without_ttl_sits_out_the_stated_time() -> None:
    gate = AppLiveness()
    gate.resign(10, sit_out_s=5)
    assert not gate.allows_leading(10) and gate.blocked_reason(12) == "resigned"
    assert gate.next_change_mono(12) == 15
    assert gate.allows_leading(15)
    assert gate.view(15).sit_out_until_mono is None


def test_resign_with_ttl_needs_a_heartbeat_after_the_sit_out() -> None:
    gate = AppLiveness(ttl_s=3)
    gate.beat(9, wall(9))
    gate.resign(10, sit_out_s=2)
    gate.beat(11, wall(11))  # during the sit-out: does not end it
    assert not gate.allows_leading(11.5)
    assert not gate.allows_leading(12.5)  # sit-out over, but no heartbeat since
    assert gate.next_change_mono(12.5) is None
    gate.beat(12.6, wall(12.6))
    assert gate.allows_leading(12.6)


def test_an_app_that_resigns_and_exits_never_returns() -> None:
    gate = AppLiveness(ttl_s=3)
    gate.beat(0, wall(0))
    gate.resign(1, sit_out_s=0.5)
    assert not any(gate.allows_leading(t) for t in (1, 2, 5, 100, 10_000))


def test_a_resign_with_no_sit_out_ends_the_term_and_may_campaign_at_once() -> None:
    gate = AppLiveness(ttl_s=3)
    gate.beat(0, wall(0))
    gate.resign(1, sit_out_s=0)
    assert gate.term_end_reason(started_mono=0.5, now_mono=1) == "resigned"  # the term begun before ends
    assert gate.term_end_reason(started_mono=1.5, now_mono=2) is None  # a term begun after may go on
    assert gate.allows_leading(1) and not gate.allows_leading(3)  # until the TTL, as ever


def test_a_lapse_covered_by_a_late_heartbeat_still_ended_the_term() -> None:
    gate = AppLiveness(ttl_s=3)
    gate.beat(0, wall(0))
    gate.beat(4, wall(4))  # one second late: the TTL lapsed at 3
    assert gate.allows_leading(4)
    assert "app heartbeat missed" in (gate.term_end_reason(started_mono=1, now_mono=4) or "")
    assert gate.term_end_reason(started_mono=3.5, now_mono=4) is None
    assert gate.leading_until_mono() == 7


def test_lapse_since_names_the_latest_covered_lapse_and_never_a_resign() -> None:
    gate = AppLiveness(ttl_s=3)
    gate.beat(0, wall(0))
    assert gate.lapse_since(0) is None  # on time so far
    gate.resign(1, sit_out_s=0)
    assert gate.lapse_since(0) is None and gate.resigned_since(0)  # a resign is not a lapse
    gate.beat(5, wall(5))  # two seconds late: the TTL lapsed at 3
    assert "app heartbeat missed" in (gate.lapse_since(0) or "")
    assert gate.lapse_since(3) == gate.lapse_since(0)  # a term begun at the lapse ended with it
    assert gate.lapse_since(3.5) is None  # a term begun after the lapse: not ended by it
    gate.beat(6, wall(6))
    assert "app heartbeat missed" in (gate.lapse_since(0) or "")  # an on-time heartbeat covers nothing


def test_no_lapse_without_a_ttl_or_before_the_late_heartbeat() -> None:
    untimed = AppLiveness()
    untimed.beat(0, wall(0))
    untimed.beat(100, wall(100))
    assert untimed.lapse_since(0) is None
    gate = AppLiveness(ttl_s=3)
    gate.beat(0, wall(0))
    assert gate.lapse_since(0) is None  # silent since 3, but no heartbeat has covered it yet:
    assert gate.blocked_reason(10) is not None  # the lapse going on is the gate's


def test_a_second_resign_never_shortens_the_sit_out() -> None:
    gate = AppLiveness()
    gate.resign(0, sit_out_s=10)
    gate.resign(1, sit_out_s=1)
    assert not gate.allows_leading(5) and gate.allows_leading(10)


@pytest.mark.parametrize(("ttl", "url", "message"), [
    (1.0, "", "--app-heartbeat-ttl: must be greater than --heartbeat-interval (1s <= 1s)"),
    (0.5, "", "--app-heartbeat-ttl: must be greater than --heartbeat-interval"),
    (None, "http://127.0.0.1:8080/healthz", "--app-health-url: needs --app-heartbeat-ttl"),
    (3.0, "https://127.0.0.1:8080/healthz", "--app-health-url: must be http://127.0.0.1:PORT/path"),
    (3.0, "http://10.1.2.3:8080/healthz", "--app-health-url: must be http://127.0.0.1:PORT/path"),
    (3.0, "http://127.0.0.1/healthz", "--app-health-url: must be http://127.0.0.1:PORT/path"),
])
def test_app_settings_are_refused_in_one_line(ttl: float | None, url: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_app_ttl(ttl, 1.0, url)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_app_settings_that_make_sense_pass() -> None:
    check_app_ttl(None, 1.0, "")
    check_app_ttl(3.0, 1.0, "http://127.0.0.1:8080/healthz")
    check_app_ttl(3.0, 1.0, "http://[::1]:8080/")


# ------------------------------------------------------------------------ heartbeat bodies


def test_heartbeat_bodies_that_are_accepted() -> None:
    assert parse_heartbeat(b"") is None and parse_heartbeat(b"  \n") is None
    assert parse_heartbeat(b"{}") == {}
    body = {"schedule_count": 12, "next_due_task": "cleanup", "detail": {"queue": 3, "ok": True, "x": None}}
    assert parse_heartbeat(json.dumps(body).encode()) == body
    assert parse_heartbeat(b'{"schedule_count": 3.0, "next_due_task": null}') == {"schedule_count": 3,
                                                                                   "next_due_task": None}


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b'"x"', b"12", b'{"schedule_count": -1}', b'{"schedule_count": true}',
    b'{"schedule_count": 1.5}', b'{"schedule_count": "3"}', b'{"next_due_task": 3}', b'{"bogus": 1}',
    b'{"detail": []}', b'{"detail": {"a": {"nested": 1}}}', b'{"detail": {"a": [1]}}',
    b'{"detail": {"a": NaN}}', b'{"schedule_count": Infinity}',
    json.dumps({"next_due_task": "t" * 257}).encode(),
    json.dumps({"detail": {str(i): i for i in range(17)}}).encode(),
    json.dumps({"detail": {"k" * 65: 1}}).encode(),
    json.dumps({"detail": {"k": "v" * 257}}).encode(),
    b"[" * 100_000,
])
def test_heartbeat_bodies_that_are_refused(raw: bytes) -> None:
    with pytest.raises(BadBody):
        parse_heartbeat(raw)


# ------------------------------------------------------------------------ members


def record(identity: str, role: str = "standby", duration_s: int = 3) -> MemberRecord:
    # renewTime a year off: aliveness must not look at it.
    return MemberRecord(identity, role, duration_s, {"schedule_count": 1}, renew_time=WALL - timedelta(days=365))


def test_member_aliveness_is_judged_by_observed_change_not_renew_time() -> None:
    table = MemberTable()
    table.observe(100, wall(100), "e-member-a", record("a", "leader"), "1")
    table.observe(100, wall(100), "e-member-b", record("b"), "5")
    assert table.counts(100) == {"leader": 1, "standby": 1, "unknown": 0, "stale": 0}
    table.observe(102, wall(102), "e-member-a", record("a", "leader"), "2")  # renewed: clock restarts
    table.observe(102.5, wall(102.5), "e-member-b", record("b"), "5")  # same version again: it does not
    assert table.alive("e-member-a", 104.9) and not table.alive("e-member-b", 103)
    assert table.counts(103) == {"leader": 1, "standby": 0, "unknown": 0, "stale": 1}
    rows = table.rows(103)
    assert [(r["identity"], r["role"], r["alive"]) for r in rows] == [("a", "leader", True), ("b", "standby", False)]
    assert rows[0]["info"] == {"schedule_count": 1}
    table.observe(104, wall(104), "e-member-a", None)  # deleted on a clean shutdown
    assert [r["identity"] for r in table.rows(104)] == ["b"]


def test_a_fresh_list_drops_members_it_lacks_and_keeps_the_clocks_of_the_others() -> None:
    table = MemberTable()
    table.observe(0, wall(0), "m-a", record("a"), "1")
    table.observe(0, wall(0), "m-b", record("b"), "1")
    table.replace_all(2, wall(2), {"m-a": (record("a"), "1")})
    assert [r["identity"] for r in table.rows(2)] == ["a"]
    assert not table.alive("m-a", 3)  # still counted from 0, not from the relist


def test_stale_records_become_removable_after_ten_durations_with_their_version() -> None:
    table = MemberTable()
    table.observe(0, wall(0), "m-a", record("a", duration_s=3), "7")
    assert table.removable(29) == []
    assert table.removable(30) == [("m-a", "7")]


def test_member_names_and_labels_are_valid_and_distinct() -> None:
    assert member_lease_name("web-leader", "web-7d9c-x2") == "web-leader-member-web-7d9c-x2"
    odd = member_lease_name("web-leader", "Web_7D9C")
    assert odd.startswith("web-leader-member-web-7d9c-") and odd != member_lease_name("web-leader", "web_7d9c")
    long_name = member_lease_name("l" * 200, "i" * 100)
    assert len(long_name) <= 253
    assert election_label_value("web-leader") == "web-leader"
    assert len(election_label_value("a" * 100)) <= 63
    assert member_duration_s(2.5) == 3 and member_duration_s(0.2) == 1
    lease = record("a").to_lease("m-a", "ns", "web-leader")
    assert lease["metadata"]["labels"] == {ELECTION_LABEL: "web-leader"}
    assert lease["spec"]["holderIdentity"] == "a" and lease["spec"]["leaseDurationSeconds"] == 3
    back = MemberRecord.from_lease(lease)
    assert (back.identity, back.role, back.info, back.duration_s) == ("a", "standby", {"schedule_count": 1}, 3)
    assert MemberRecord.from_lease({"metadata": {"annotations": {"lease-sidecar.io/app-info": "{bad"}}}).info == {}
    assert back.app_alive is None
    for alive in (True, False):
        marked = MemberRecord("a", "leader", 3, {}, app_alive=alive).to_lease("m-a", "ns", "e")
        assert marked["metadata"]["annotations"]["lease-sidecar.io/app-alive"] == str(alive).lower()
        assert MemberRecord.from_lease(marked).app_alive is alive
