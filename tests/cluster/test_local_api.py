"""The local API, role files and client helpers, read from real sidecars on a real Lease."""

from __future__ import annotations

import http.client
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar import client
from sidecar.core.record import FENCING_ANNOTATION, parse_microtime
from tests.cluster import sidecars
from tests.cluster.kube import get_lease


@pytest.fixture()
def pair(namespace: str, tmp_path: Path):
    fleet = [sidecars.start("api-a", "api", namespace, tmp_path)]
    sidecars.wait_for(lambda: sidecars.leaders(fleet) == ["api-a"], 10)
    fleet.append(sidecars.start("api-b", "api", namespace, tmp_path))
    sidecars.wait_for(lambda: fleet[1].leader()["holder"] == "api-a", 5)
    yield fleet
    sidecars.stop_all(fleet)


def parse_time(text: str) -> datetime:
    moment = parse_microtime(text)
    assert moment is not None, text
    return moment


def assert_files_agree(sidecar: sidecars.Sidecar) -> None:
    body = sidecar.leader()
    status = json.loads((sidecar.role_dir / "status.json").read_text())
    role = (sidecar.role_dir / "role").read_text()
    assert role == ("leader\n" if body["is_leader"] else "standby\n")
    for key in ("role", "is_leader", "holder", "fencing_token", "version", "lease", "identity"):
        assert status[key] == body[key], key


def test_leader_and_standby_views_agree_with_the_lease(pair: list[sidecars.Sidecar], namespace: str) -> None:
    leader, standby = pair
    lease = get_lease(namespace, "api")
    now = datetime.now(UTC)
    lead, stand = leader.leader(), standby.leader()
    assert lead["role"] == "leader" and lead["is_leader"] is True
    assert stand["role"] == "standby" and stand["is_leader"] is False
    for body in (lead, stand):
        assert body["lease"] == f"{namespace}/api"
        assert body["holder"] == lease["spec"]["holderIdentity"] == "api-a"
        assert isinstance(body["version"], int) and body["version"] >= 1
        assert parse_time(body["observed_at"]) <= now
    assert lead["identity"] == "api-a" and stand["identity"] == "api-b"
    assert lead["fencing_token"] == int(lease["metadata"]["annotations"][FENCING_ANNOTATION])
    assert stand["fencing_token"] is None and stand["valid_until"] is None and stand["term_started_at"] is None
    assert abs((parse_time(lead["term_started_at"]) - parse_time(lease["spec"]["acquireTime"])).total_seconds()) < 0.5
    left = (parse_time(lead["valid_until"]) - now).total_seconds()
    assert 0 < left <= 2.5 + 0.1  # never promises more than the renew deadline
    for sidecar in pair:
        assert_files_agree(sidecar)


def test_is_leader_codes_and_leader_elector_compatibility(pair: list[sidecars.Sidecar]) -> None:
    leader, standby = pair
    assert leader.get("/is-leader") == (200, True)
    assert standby.get("/is-leader") == (503, False)
    assert leader.get("/") == (200, {"name": "api-a"}) == standby.get("/")
    assert leader.get("/healthz")[0] == 200 and standby.get("/readyz")[0] == 200
    spec = leader.get("/openapi.json")[1]
    assert {"/leader", "/leader/events", "/is-leader", "/", "/healthz", "/readyz"} <= set(spec["paths"])


def test_errors_are_json(pair: list[sidecars.Sidecar]) -> None:
    leader = pair[0]
    assert leader.get("/nope")[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", leader.http_port, timeout=2)
    conn.request("POST", "/leader", body=b"x" * 10)
    resp = conn.getresponse()
    assert resp.status == 405 and json.loads(resp.read())["status"] == 405
    for query in ("wait=abc", "wait=-1", "wait=nan", "since=x&wait=1"):
        status, body = leader.get(f"/leader?{query}")
        assert status == 400 and "error" in body, query


def test_long_poll_and_event_stream_deliver_a_hand_over_fast(pair: list[sidecars.Sidecar]) -> None:
    leader, standby = pair
    before = standby.leader()
    assert before["version"] == standby.get(f"/leader?wait=0.2&since={before['version']}")[1]["version"]

    polled: dict[str, Any] = {}
    events: list[tuple[float, dict[str, Any]]] = []

    def long_poll() -> None:
        since = before["version"]
        # The release shows first (holder gone), then the take-over: each is its own version.
        for _ in range(5):
            _, body = standby.get(f"/leader?wait=20&since={since}", timeout=25)
            polled.update(body=body, at=time.time())
            if body["is_leader"]:
                return
            since = body["version"]

    def stream() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", standby.http_port, timeout=25)
        conn.request("GET", "/leader/events")
        resp = conn.getresponse()
        assert resp.getheader("Content-Type", "").startswith("text/event-stream")
        while len(events) < 3:
            line = resp.fp.readline().decode()
            if line.startswith("data: "):
                events.append((time.time(), json.loads(line[6:])))
                if events[-1][1]["is_leader"]:
                    return

    threads = [threading.Thread(target=long_poll), threading.Thread(target=stream)]
    for thread in threads:
        thread.start()
    sidecars.wait_for(lambda: len(events) >= 1, 5)
    time.sleep(0.2)  # let the long-poll park
    leader.terminate()
    for thread in threads:
        thread.join(25)
    # When did the sidecar notice? Its own log line for the role change (ms resolution).
    noticed = next(json.loads(line) for line in standby.logs().splitlines()
                   if '"to_role": "leader"' in line)
    noticed_at = parse_time(noticed["ts"].replace("Z", "000Z")).timestamp()
    assert polled["body"]["is_leader"] is True and polled["body"]["version"] > before["version"]
    assert events[-1][1]["is_leader"] is True
    assert polled["at"] - noticed_at < 0.1, polled["at"] - noticed_at
    assert events[-1][0] - noticed_at < 0.1, events[-1][0] - noticed_at
    assert_files_agree(standby)


def test_role_files_follow_every_step_including_sigterm(pair: list[sidecars.Sidecar]) -> None:
    leader, standby = pair
    first_mtime = (leader.role_dir / "role").stat().st_mtime
    time.sleep(1.3)  # one heartbeat (1 s in tests) refreshes the files
    assert (leader.role_dir / "role").stat().st_mtime > first_mtime
    leader.terminate()
    sidecars.wait_for(lambda: standby.leader()["is_leader"], 2)
    assert (leader.role_dir / "role").read_text() == "standby\n"
    assert json.loads((leader.role_dir / "status.json").read_text())["is_leader"] is False
    assert_files_agree(standby)
    assert standby.terminate() == 0
    assert (standby.role_dir / "role").read_text() == "standby\n"


def test_the_deadline_is_on_the_shared_monotonic_clock_and_renewals_are_pushed(
        pair: list[sidecars.Sidecar]) -> None:
    """Issue 17 item 3, on real sidecars: this test runs on the same node, so its time.monotonic()
    is the sidecar's clock, as it is for any container of the pod."""
    leader, standby = pair
    body = leader.leader()
    now = time.monotonic()
    assert 0 < body["valid_until_monotonic"] - now <= 2.5 + 0.1  # never more than the renew deadline
    assert 0 < body["valid_for_seconds"] <= 2.5
    assert body["lease_uid"] and body["draining"] is False
    stand = standby.leader()
    assert stand["valid_until_monotonic"] is None and stand["valid_for_seconds"] is None
    assert stand["lease_uid"] == body["lease_uid"]
    status = json.loads((leader.role_dir / "status.json").read_text())
    assert status["valid_until_monotonic"] > now - 2.5  # rewritten at every renewal

    conn = http.client.HTTPConnection("127.0.0.1", leader.http_port, timeout=10)
    conn.request("GET", "/leader/events")
    resp = conn.getresponse()
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    while len(events) < 4:  # the current state, then renewals (one a second here)
        line = resp.fp.readline().decode()
        if line.startswith("event: "):
            kind = line[7:].strip()
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[6:])))
    conn.close()
    assert [kind for kind, _ in events] == ["leader", "renewal", "renewal", "renewal"]
    assert len({data["version"] for _, data in events}) == 1  # a renewal is no new version
    deadlines = [data["valid_until_monotonic"] for _, data in events]
    assert deadlines == sorted(deadlines) and len(set(deadlines)) == 4


async def test_client_helpers(pair: list[sidecars.Sidecar]) -> None:
    leader, standby = pair
    assert client.is_leader(leader.url) is True
    assert client.is_leader(standby.url) is False
    assert client.is_leader("http://127.0.0.1:1") is False  # nobody there: fail safe
    async with client.LeaderClient(standby.url) as standby_client:
        assert await standby_client.is_leader() is False
        changes = standby_client.changes(wait_s=5)
        first = await anext(changes)
        assert first["is_leader"] is False
        leader.terminate()
        status = await standby_client.wait_until_leader(timeout_s=5)
        assert status["is_leader"] and status["fencing_token"] is not None
        await changes.aclose()
    assert client.wait_until_leader(standby.url, timeout_s=2)["identity"] == "api-b"


def test_binding_beyond_loopback_is_warned_about(namespace: str, tmp_path: Path) -> None:
    port = sidecars.free_port()
    wide = sidecars.start("wide", "wide", namespace, tmp_path, "--http-address", f"0.0.0.0:{port}",
                          wait_ready=False)
    try:
        wide.http_port = port
        sidecars.wait_for(lambda: '"event": "http_not_loopback"' in wide.logs(), 10, interval=0.05)
        sidecars.wait_for(lambda: (wide.leader() or {}).get("role") in ("leader", "standby"), 10, interval=0.05)
    finally:
        wide.terminate()
