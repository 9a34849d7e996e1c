"""The app's side of the local API on real sidecars: heartbeats (and their refusals), resign, the
members view and its Leases, the client helpers."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from pathlib import Path

import pytest

from sidecar import client
from tests.cluster import sidecars
from tests.cluster.kube import kubectl


@pytest.fixture()
def pair(namespace: str, tmp_path: Path):
    """Two sidecars with liveness-gated leadership, each with a process heartbeating as its app."""
    args = ("--members", "--app-heartbeat-ttl", "3")
    fleet = [sidecars.start("app-a", "apps", namespace, tmp_path, *args)]
    apps = [sidecars.start_app(fleet[0])]
    sidecars.wait_for(lambda: sidecars.leaders(fleet) == ["app-a"], 30)
    fleet.append(sidecars.start("app-b", "apps", namespace, tmp_path, *args))
    apps.append(sidecars.start_app(fleet[1]))
    yield fleet
    for app in apps:
        app.kill()
        app.wait(5)
    sidecars.stop_all(fleet)


@pytest.fixture()
def solo(namespace: str, tmp_path: Path):
    """One gated sidecar whose 'app' is the test itself (a long TTL, so the test's pace is enough)."""
    sidecar = sidecars.start("solo", "solo", namespace, tmp_path, "--app-heartbeat-ttl", "60")
    sidecar.post("/heartbeat")
    sidecars.wait_for(lambda: sidecars.leaders([sidecar]) == ["solo"], 30)
    yield sidecar
    sidecars.stop_all([sidecar])


def raw_request(sidecar: sidecars.Sidecar, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.http_port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_heartbeat_info_shows_in_leader_status_file_and_metrics(solo: sidecars.Sidecar) -> None:
    leader = solo
    status, body = leader.post("/heartbeat", {"schedule_count": 12, "next_due_task": "cleanup",
                                             "detail": {"queue": 3}})
    assert status == 200 and body["is_leader"] is True
    app = leader.leader()["app"]
    assert app["info"] == {"schedule_count": 12, "next_due_task": "cleanup", "detail": {"queue": 3}}
    assert app["required"] is True and app["alive"] is True and app["ttl_seconds"] == 60
    assert app["last_heartbeat_at"] and 0 <= app["since_last_heartbeat_seconds"] < 5
    sidecars.wait_for(lambda: json.loads((leader.role_dir / "status.json").read_text())["app"]["info"].get(
        "next_due_task") == "cleanup", 3)
    metrics = leader.metrics_text()
    age = next(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("lease_sidecar_app_heartbeat_age_seconds{"))
    assert 0 <= age < 5
    assert 'lease_sidecar_app_alive{name="solo"' in metrics
    status, body = leader.post("/heartbeat")  # no body: liveness only, the info stays
    assert status == 200 and body["app"]["info"]["schedule_count"] == 12


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{not json", "not JSON"), (b"[1, 2]", "must be a JSON object"), (b'{"bogus": 1}', "unknown field"),
    (b'{"schedule_count": -3}', "schedule_count"), (b'{"next_due_task": 7}', "next_due_task"),
    (b'{"detail": {"a": {"b": 1}}}', "detail.a"), (b'{"detail": {"x": NaN}}', "not JSON"),
])
def test_bad_heartbeat_bodies_are_400_json_and_change_nothing(solo: sidecars.Sidecar, body: bytes,
                                                              fragment: str) -> None:
    leader = solo
    before = leader.leader()["app"]["heartbeats"]
    status, headers, raw = raw_request(leader, "POST", "/heartbeat", body, {"Content-Type": "application/json"})
    answer = json.loads(raw)
    assert status == 400 and answer["status"] == 400 and fragment in answer["error"], answer
    assert headers["Content-Type"].startswith("application/json")
    assert leader.leader()["app"]["heartbeats"] == before


def test_oversized_bodies_are_413_with_or_without_a_length(solo: sidecars.Sidecar) -> None:
    leader = solo
    big = json.dumps({"detail": {"k": "v" * 9000}}).encode()
    status, _, raw = raw_request(leader, "POST", "/heartbeat", big)
    assert status == 413 and json.loads(raw)["status"] == 413
    conn = http.client.HTTPConnection("127.0.0.1", leader.http_port, timeout=5)
    conn.putrequest("POST", "/heartbeat")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for _ in range(10):
        conn.send(b"400\r\n" + b" " * 1024 + b"\r\n")
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["status"] == 413
    conn.close()
    assert leader.leader()["is_leader"] is True


def test_wrong_methods_are_405_with_allow_and_since_must_be_whole(solo: sidecars.Sidecar) -> None:
    leader = solo
    for method, path, allowed in (("GET", "/heartbeat", "POST"), ("DELETE", "/leader/resign", "POST"),
                                  ("POST", "/members", "GET, HEAD"), ("PUT", "/leader", "GET, HEAD")):
        status, headers, raw = raw_request(leader, method, path)
        assert status == 405 and headers.get("Allow") == allowed, (method, path, headers)
        assert json.loads(raw)["allowed"] == allowed.split(", ")
    for query in ("since=0.5", "since=-1", "since=1e3", "since=%201"):
        status, body = leader.get(f"/leader?wait=0.1&{query}")
        assert status == 400 and "since" in body["error"], query
    status, body = leader.post("/leader/resign?sit_out=-1")
    assert status == 400 and "sit_out" in body["error"]
    assert leader.leader()["is_leader"] is True  # a refused resign changes nothing


def test_members_view_and_its_leases(pair: list[sidecars.Sidecar], namespace: str) -> None:
    leader, standby = pair
    def roles() -> dict[str, tuple[str, bool]]:
        return {m["identity"]: (m["role"], m["alive"]) for m in standby.get("/members")[1]["members"]}

    sidecars.wait_for(lambda: roles() == {"app-a": ("leader", True), "app-b": ("standby", True)}, 20, 0.1)
    view = standby.get("/members")[1]
    assert view["enabled"] is True and view["counts"] == {"leader": 1, "standby": 1, "unknown": 0, "stale": 0}
    assert next(m for m in view["members"] if m["identity"] == "app-a")["info"]["next_due_task"] == "tick"
    sidecars.wait_for(lambda: all(m["app_alive"] is True for m in standby.get("/members")[1]["members"]), 10, 0.1)
    listed = kubectl("get", "leases", "-n", namespace, "-l", "lease-sidecar.io/election=apps",
                     "-o", "jsonpath={range .items[*]}{.metadata.name}={.spec.holderIdentity}/"
                     "{.metadata.annotations.lease-sidecar\\.io/role} {end}")
    assert sorted(listed.split()) == ["apps-member-app-a=app-a/leader", "apps-member-app-b=app-b/standby"]
    metrics = standby.metrics_text()
    assert 'lease_sidecar_members{name="apps",namespace="' in metrics and 'state="leader"} 1.0' in metrics
    # A clean shutdown removes the member's Lease; a crash leaves it, and it goes stale by observation.
    assert leader.terminate() == 0
    sidecars.wait_for(lambda: "app-a" not in roles(), 15, 0.1)
    assert "apps-member-app-a" not in kubectl("get", "leases", "-n", namespace, "-o", "name")
    sidecars.wait_for(lambda: roles().get("app-b") == ("leader", True), 20, 0.1)
    third = sidecars.start("app-c", "apps", namespace, standby.role_dir.parent.parent, "--members",
                           "--app-heartbeat-ttl", "3")
    try:
        sidecars.wait_for(lambda: roles().get("app-c") == ("standby", True), 20, 0.1)
        rows = {m["identity"]: m for m in standby.get("/members")[1]["members"]}
        assert rows["app-c"]["app_alive"] is False  # it has no app: it says so itself
        third.kill()
        sidecars.wait_for(lambda: roles().get("app-c") == ("standby", False), 20, 0.1)
        assert standby.get("/members")[1]["counts"]["stale"] == 1
        # The members view's watch is counted as the election's is: "ok" once the stream opens.
        assert 'verb="member_watch"' in standby.metrics_text()
        assert re.search(r'_count\{[^}]*result="ok"[^}]*verb="member_watch"|'
                         r'_count\{[^}]*verb="member_watch"[^}]*result="ok"', standby.metrics_text())
    finally:
        sidecars.stop_all([third])


async def test_client_helpers_never_raise(solo: sidecars.Sidecar) -> None:
    standby = solo  # leader or not, the helpers behave the same
    assert client.heartbeat("http://127.0.0.1:1") is None
    assert client.resign("http://127.0.0.1:1") is None
    status = client.heartbeat(standby.url, schedule_count=5, next_due_task="t", detail={"a": 1})
    assert status is not None and status["app"]["info"] == {"schedule_count": 5, "next_due_task": "t",
                                                             "detail": {"a": 1}}
    assert client.heartbeat(standby.url, detail={"nested": {"x": 1}}) is None  # refused: None, no raise
    async with client.LeaderClient(standby.url) as app:
        assert (await app.heartbeat(schedule_count=6))["app"]["info"]["schedule_count"] == 6
    async with client.LeaderClient("http://127.0.0.1:1") as nobody:
        assert await nobody.heartbeat() is None and await nobody.resign() is None
    counter = iter(range(100, 200))
    beats = client.Heartbeats(standby.url, interval_s=0.05, info=lambda: {"schedule_count": next(counter)}).start()
    try:
        sidecars.wait_for(lambda: standby.leader()["app"]["info"].get("schedule_count", 0) >= 102, 5)
    finally:
        beats.stop()
    assert beats.last is not None and not beats._thread.is_alive()
    await asyncio.sleep(0.1)
    stopped_at = standby.leader()["app"]["heartbeats"]
    await asyncio.sleep(0.3)
    assert standby.leader()["app"]["heartbeats"] == stopped_at
