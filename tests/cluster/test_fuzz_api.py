"""Hypothesis throws requests, and bytes that are not requests, at a leading sidecar.

No response may be a 5xx, and the election must not notice: same leader, same term.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cluster import sidecars
from tests.cluster.kube import kubectl

PATHS = ["/", "/leader", "/leader/events", "/is-leader", "/healthz", "/readyz", "/openapi.json", "/metrics",
         "/leader/", "//leader", "/LEADER", "/%00", "/..%2f..%2fetc/passwd", "/heartbeat", "/members",
         "/leader/resign"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW", "get"]


@pytest.fixture(scope="module")
def target(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sidecars.Sidecar]:
    namespace = f"fuzz-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", namespace)
    sidecar = sidecars.start("fuzzed", "fuzz", namespace, tmp_path_factory.mktemp("fuzz"))
    sidecars.wait_for(lambda: sidecar.leader()["is_leader"], 10)
    # The term the fuzzing must not disturb: its token (one above a resourceVersion, so never a
    # constant) is compared at the end.
    sidecar.extra["first_token"] = sidecar.leader()["fencing_token"]
    yield sidecar
    sidecars.stop_all([sidecar])
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)


query_values = st.one_of(st.text(max_size=30), st.integers(-10**20, 10**20).map(str),
                         st.sampled_from(["nan", "inf", "-0", "1e999", "0.001", "", "%", "0x10"]))
queries = st.dictionaries(st.sampled_from(["wait", "since", "x", ""]), query_values, max_size=3)
headers = st.dictionaries(st.sampled_from(["Accept", "Content-Length", "Transfer-Encoding", "Range", "X-Junk",
                                           "Last-Event-ID"]),
                          st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                          max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), path=st.sampled_from(PATHS), query=queries, extra=headers,
       body=st.binary(max_size=64))
def test_requests_never_5xx(target: sidecars.Sidecar, method: str, path: str, query: dict[str, str],
                            extra: dict[str, str], body: bytes) -> None:
    if path == "/leader/events" and method in ("GET", "get"):
        return  # an endless stream by design; covered in test_local_api
    if path == "/leader/resign" and method == "POST":
        return  # the election is meant to notice that one; test_app_api and schemathesis cover it
    query = {k: v for k, v in query.items() if k != "wait"} | ({"wait": "0.01"} if "wait" in query else {})
    url = path + ("?" + urllib.parse.urlencode(query) if query else "")
    conn = http.client.HTTPConnection("127.0.0.1", target.http_port, timeout=5)
    try:
        conn.putrequest(method, url, skip_accept_encoding=True)
        for name, value in extra.items():
            conn.putheader(name, value)
        conn.endheaders(body if method not in ("GET", "HEAD", "get") else None)
        status = conn.getresponse().status
    except (http.client.HTTPException, ConnectionError):
        return  # the server may hang up on nonsense: fine, as long as it survives
    finally:
        conn.close()
    assert status < 500, (method, url, extra)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(st.binary(min_size=1, max_size=2048),
                         st.just(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"),
                         st.just(b"GET /leader HTTP/1.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n"),
                         st.just(b"POST /leader HTTP/1.1\r\nContent-Length: 99999999\r\n\r\nabc")))
def test_raw_garbage_is_refused_without_a_5xx(target: sidecars.Sidecar, garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", target.http_port), timeout=3) as sock:
        try:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            reply = sock.recv(64)
        except OSError:
            return
    if reply.startswith(b"HTTP/1."):
        assert not reply[9:10] == b"5", reply


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=300), lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=70), inner, max_size=20), max_leaves=40)
heartbeat_bodies = st.one_of(
    st.dictionaries(st.sampled_from(["schedule_count", "next_due_task", "detail", "x"]), json_values,
                    max_size=4).map(lambda body: json.dumps(body).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=600),
    st.just(b'{"detail": {"k": "' + b"v" * 9000 + b'"}}'),
    st.just(b'{"schedule_count": NaN}'), st.just(b"[" * 5000))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=heartbeat_bodies, content_type=st.sampled_from(["application/json", "text/plain", "", "x/y; a=b"]))
def test_heartbeat_bodies_never_5xx(target: sidecars.Sidecar, body: bytes, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    conn = http.client.HTTPConnection("127.0.0.1", target.http_port, timeout=5)
    try:
        conn.request("POST", "/heartbeat", body=body, headers=headers)
        resp = conn.getresponse()
        status, answer = resp.status, json.loads(resp.read())
    finally:
        conn.close()
    assert status in (200, 400, 413), (status, body[:200])
    if status != 200:
        assert answer["status"] == status and answer["error"]
    if len(body) > 8192:
        assert status == 413


def test_the_election_did_not_notice(target: sidecars.Sidecar) -> None:
    body = target.leader()
    assert body["is_leader"] is True and body["fencing_token"] == target.extra["first_token"]
    assert target.get("/healthz")[0] == 200
    assert "Traceback" not in target.logs()
