"""Keyed locks from the app's side (`lease_sidecar_client.locks`), blocking and asyncio, against a
stand-in for the sidecar's /locks API (stdlib http.server, below). The real sidecar is tested
against the library in tests/cluster/test_keyed_locks.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from lease_sidecar_client import current_term
from lease_sidecar_client.locks import AsyncLocks, LockBusy, LockLost, Locks

PATIENCE_S = 10.0  # generous: an event is waited for, never timed
TTL_S = 0.6  # short, so that renewals come every 0.2 s


def wait_until(condition: Any, what: str) -> None:
    end = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {PATIENCE_S}s: {what}")
        time.sleep(0.01)


class FakeLocks:
    """/locks/<key>: POST acquires (409 while another owner holds it), PUT ?owner= renews (409 for
    another owner; 503 while `unanswered`), DELETE ?owner= releases, GET tells whether it is held.
    `take_over(key)` hands a held key to another owner, as after a lapse."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[str, int, float]] = {}  # key -> (owner, token, valid until, monotonic)
        self.token = 0
        self.renewals = 0
        self.releases = 0
        self.unanswered = False
        self.acquire_wait_s = 0.0  # how long an acquire with ?wait= waits before it is granted
        self._mutex = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                url = urlsplit(self.path)
                key = unquote(url.path.removeprefix("/locks/"))
                query = {name: values[0] for name, values in parse_qs(url.query).items()}
                if self.command == "POST" and "wait" in query:
                    time.sleep(fake.acquire_wait_s)  # as a waited acquire is granted late
                with fake._mutex:
                    code, body = fake.answer(self.command, key, query)
                self._answer(code, body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _lock_body(self, key: str) -> dict[str, Any]:
        owner, token, until = self.held[key]
        return {"key": key, "owner": owner, "lease": f"ns/lock-{key.replace('/', '-')}", "fencing_token": token,
                "valid_until_monotonic": until, "valid_for_seconds": until - time.monotonic()}

    def answer(self, method: str, key: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        current = self.held.get(key)
        held = current is not None and current[2] > now
        if method == "GET":
            return 200, {"locked": held}
        if method == "POST":
            if held:
                return 409, {"error": "held", "holder": current[0], "retry_after_seconds": 0.1}
            self.token += 1
            ttl_s = float(query.get("ttl", f"{TTL_S}s").removesuffix("s"))
            self.held[key] = (f"owner-{self.token}", self.token, now + ttl_s)
            return 200, self._lock_body(key)
        mine = held and current[0] == query.get("owner")
        if method == "PUT":
            if self.unanswered:
                return 503, {"error": "unavailable"}
            if not mine:
                return 409, {"error": "not held by this owner"}
            self.renewals += 1
            self.held[key] = (current[0], current[1], now + TTL_S)
            return 200, self._lock_body(key)
        if method == "DELETE":
            if not mine:
                return 409, {"error": "not held by this owner"}
            self.releases += 1
            del self.held[key]
            return 200, {"released": True}
        return 405, {"error": "method"}

    def take_over(self, key: str) -> None:
        with self._mutex:
            self.token += 1
            self.held[key] = (f"owner-{self.token}", self.token, time.monotonic() + 60)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WithFakeLocks(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeLocks()

    def tearDown(self) -> None:
        self.fake.close()


class Blocking(WithFakeLocks):
    def test_holding_renews_binds_the_term_and_releases(self) -> None:
        locks = Locks(self.fake.url)
        with locks.holding("tenant/job", ttl_s=TTL_S) as held:
            self.assertEqual(current_term(), held.lock.term)
            self.assertEqual(held.lock.term.lease, "ns/lock-tenant-job")
            self.assertIsNone(Locks(self.fake.url).try_acquire("tenant/job"))  # held: another gets None
            self.assertTrue(locks.is_locked("tenant/job"))
            first_deadline = held.lock.valid_until_monotonic
            wait_until(lambda: self.fake.renewals >= 2, "two renewals")
            self.assertGreater(held.check().valid_until_monotonic, first_deadline)
        self.assertEqual(self.fake.releases, 1)
        self.assertFalse(locks.is_locked("tenant/job"))
        with self.assertRaises(LockBusy):  # a busy key, acquired without waiting
            locks.acquire("other")
            locks.acquire("other")

    def test_a_lock_granted_after_a_long_wait_is_valid_on_arrival(self) -> None:
        # Granted 1 s after the question with 0.6 s to run: the any-clock bound (question + time
        # left) is spent on arrival, so the library renews once for a bound from a fresh question.
        self.fake.acquire_wait_s = 1.0
        lock = Locks(self.fake.url).acquire("tenant/job", ttl_s=TTL_S, wait_s=5)
        self.assertTrue(lock.is_valid())
        self.assertEqual(self.fake.renewals, 1)

    def test_a_lock_granted_after_a_long_wait_is_kept_when_the_renewal_on_arrival_fails(self) -> None:
        # The sidecar does not answer the renewal (503): the granted lock is still returned, with
        # its own (spent) bound, rather than orphaned by an exception before any `with` block.
        self.fake.acquire_wait_s, self.fake.unanswered = 1.0, True
        lock = Locks(self.fake.url).acquire("tenant/job", ttl_s=TTL_S, wait_s=5)
        self.assertEqual((lock.key, lock.fencing_token), ("tenant/job", 1))

    def test_a_refused_renewal_is_a_loss_told_once_and_not_released(self) -> None:
        reasons: list[str] = []
        locks = Locks(self.fake.url)
        with locks.holding("tenant/job", ttl_s=TTL_S, on_lost=reasons.append) as held:
            self.fake.take_over("tenant/job")
            self.assertTrue(held.lost.wait(PATIENCE_S))
            with self.assertRaises(LockLost):
                held.check()
            self.assertEqual(len(reasons), 1)
        self.assertEqual(self.fake.releases, 0)  # lost: nothing to release
        self.assertFalse(locks.release(held.lock))  # and a late release says so

    def test_a_lock_whose_renewals_go_unanswered_is_lost_at_its_deadline(self) -> None:
        locks = Locks(self.fake.url)
        with locks.holding("tenant/job", ttl_s=TTL_S) as held:
            self.fake.unanswered = True
            wait_until(lambda: not held.lock.is_valid(), "the deadline passed")
            with self.assertRaises(LockLost) as lost:
                held.check()
            self.assertEqual(str(lost.exception), "deadline reached")


class Asyncio(WithFakeLocks):
    def test_holding_renews_and_releases(self) -> None:
        async def work() -> int:
            async with AsyncLocks(self.fake.url).holding("tenant/job", ttl_s=TTL_S) as held:
                self.assertEqual(current_term(), held.lock.term)
                await asyncio.to_thread(wait_until, lambda: self.fake.renewals >= 2, "two renewals")
                return held.check().fencing_token

        self.assertEqual(asyncio.run(asyncio.wait_for(work(), PATIENCE_S)), 1)
        self.assertEqual(self.fake.releases, 1)

    def test_a_lock_granted_after_a_long_wait_is_valid_on_arrival(self) -> None:
        self.fake.acquire_wait_s = 1.0
        lock = asyncio.run(AsyncLocks(self.fake.url).acquire("tenant/job", ttl_s=TTL_S, wait_s=5))
        self.assertTrue(lock.is_valid())
        self.assertEqual(self.fake.renewals, 1)

    def test_a_loss_cancels_the_work_and_leaves_the_block_with_lock_lost(self) -> None:
        reasons: list[str] = []

        async def work() -> None:
            async with AsyncLocks(self.fake.url).holding("tenant/job", ttl_s=TTL_S, on_lost=reasons.append):
                self.fake.take_over("tenant/job")
                await asyncio.sleep(PATIENCE_S * 3)  # cancelled by the loss long before

        with self.assertRaises(LockLost):
            asyncio.run(asyncio.wait_for(work(), PATIENCE_S * 2))
        self.assertEqual(len(reasons), 1)
        self.assertEqual(self.fake.releases, 0)


if __name__ == "__main__":
    unittest.main()
