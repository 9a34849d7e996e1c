"""A stand-in for the sidecar's local API in the library's unit tests (stdlib http.server): it
answers /leader (with `wait`/`since` long-poll), /leader/events (SSE), /heartbeat and /leader/resign
from a status the test sets. The real sidecar is tested against the library in tests/cluster."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def leader_status(token: int = 7, valid_for_s: float = 30.0, version: int = 1, **extra: Any) -> dict[str, Any]:
    now = time.monotonic()
    return {"role": "leader", "is_leader": True, "identity": "pod-a", "holder": "pod-a", "lease": "ns/app",
            "fencing_token": token, "valid_until": None, "valid_until_monotonic": now + valid_for_s,
            "valid_for_seconds": valid_for_s, "lease_uid": "uid-1", "draining": False, "version": version,
            **extra}


def standby_status(version: int = 2) -> dict[str, Any]:
    return {"role": "standby", "is_leader": False, "identity": "pod-a", "holder": "pod-b", "lease": "ns/app",
            "fencing_token": None, "valid_until": None, "valid_until_monotonic": None, "valid_for_seconds": None,
            "lease_uid": "uid-1", "draining": False, "version": version}


class FakeSidecar:
    def __init__(self, status: dict[str, Any] | None = None) -> None:
        self._status = status or standby_status(1)
        self._changed = threading.Condition()
        self.heartbeats: list[dict[str, Any]] = []
        self.resigns: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, body: Any, code: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                if url.path == "/leader":
                    wait_s = float(query.get("wait", 0))
                    since = int(query["since"]) if "since" in query else None
                    self._json(fake.wait_for_change(since, wait_s) if wait_s else fake.status)
                elif url.path == "/leader/events":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    sent = (None, None)
                    try:
                        while not fake.closed:
                            with fake._changed:
                                if (fake._status["version"], fake.renewals) == sent:
                                    fake._changed.wait(0.2)
                                current, now = dict(fake._status), (fake._status["version"], fake.renewals)
                            if now != sent:
                                kind = "leader" if now[0] != sent[0] else "renewal"
                                self.wfile.write(f"event: {kind}\ndata: {json.dumps(current)}\n\n".encode())
                                sent = now
                            else:
                                self.wfile.write(b": keep-alive\n\n")
                            self.wfile.flush()
                    except OSError:
                        pass
                else:
                    self._json({"error": "not found"}, 404)

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                if url.path == "/heartbeat":
                    if isinstance(body, dict) and any(isinstance(v, dict) for k, v in body.items() if k != "detail"):
                        self._json({"error": "bad"}, 400)
                        return
                    fake.heartbeats.append(body)
                    self._json(fake.status)
                elif url.path == "/leader/resign":
                    fake.resigns.append(url.query)
                    fake.set(standby_status(fake.status["version"] + 1))
                    self._json(fake.status)
                else:
                    self._json({"error": "not found"}, 404)

        self.closed = False
        self.renewals = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def status(self) -> dict[str, Any]:
        with self._changed:
            return dict(self._status)

    def set(self, status: dict[str, Any]) -> None:
        with self._changed:
            self._status = status
            self._changed.notify_all()

    def renew(self, valid_for_s: float) -> None:
        """A renewal: the deadline moves, the version does not."""
        with self._changed:
            self._status = {**self._status, "valid_until_monotonic": time.monotonic() + valid_for_s,
                            "valid_for_seconds": valid_for_s}
            self.renewals += 1
            self._changed.notify_all()

    def wait_for_change(self, since: int | None, wait_s: float) -> dict[str, Any]:
        """As the sidecar's long-poll: back when the version differs from `since`, or after `wait_s`."""
        end = time.monotonic() + wait_s
        with self._changed:
            while self._status["version"] == since and (left := end - time.monotonic()) > 0:
                self._changed.wait(left)
            return dict(self._status)

    def close(self) -> None:
        self.closed = True
        self.server.shutdown()
        self.server.server_close()
