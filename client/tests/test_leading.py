"""leading(): work runs only inside a term and hears of its end (blocking and asyncio), against a
stand-in for the sidecar's local API (fake_sidecar.py)."""

from __future__ import annotations

import asyncio
import threading
import time
import unittest

import lease_sidecar_client
from fake_sidecar import FakeSidecar, leader_status, standby_status
from lease_sidecar_client import Sidecar, TermEnded, current_term
from lease_sidecar_client.aio import AsyncSidecar

PATIENCE_S = 10.0  # generous: an event is waited for, never timed


class WithFake(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeSidecar(leader_status(token=7, valid_for_s=30))
        self.sidecar = Sidecar(self.fake.url, request_timeout_s=2)

    def tearDown(self) -> None:
        self.fake.close()


class Blocking(WithFake):
    def test_term_and_status(self) -> None:
        term = self.sidecar.term()
        assert term is not None
        self.assertEqual((term.lease, term.fencing_token, term.lease_uid), ("ns/app", 7, "uid-1"))
        self.assertGreater(term.remaining_s(), 20)
        self.fake.set(standby_status(2))
        self.assertIsNone(self.sidecar.term())
        self.assertIsNone(Sidecar("http://127.0.0.1:1").term())  # unreachable: no term, no exception

    def test_heartbeat_carries_update_info_and_never_raises(self) -> None:
        self.assertIsNotNone(self.sidecar.heartbeat(schedule_count=3, next_due_task="report@12:00"))
        self.assertEqual(self.fake.heartbeats[-1], {"schedule_count": 3, "next_due_task": "report@12:00"})
        self.assertIsNone(Sidecar("http://127.0.0.1:1", request_timeout_s=0.5).heartbeat(schedule_count=1))

    def test_the_work_sees_its_term_and_is_told_when_the_sidecar_stands_by(self) -> None:
        with self.sidecar.leading(refresh_s=0.2) as lead:
            self.assertEqual(current_term(), lead.term)
            self.assertEqual(lead.check().fencing_token, 7)
            self.fake.set(standby_status(2))
            self.assertTrue(lead.ended.wait(PATIENCE_S))
            self.assertFalse(lead.term.is_valid())  # its deadline was brought forward
            with self.assertRaises(TermEnded):
                lead.check()
        self.assertIsNone(current_term())
        self.assertEqual(self.fake.resigns, [])

    def test_another_token_ends_the_term(self) -> None:
        with self.sidecar.leading(refresh_s=0.2) as lead:
            self.fake.set(leader_status(token=8, version=5))
            self.assertTrue(lead.ended.wait(PATIENCE_S))
            self.assertEqual(lead.reason, lease_sidecar_client._leading.ANOTHER_TERM)

    def test_renewals_move_the_deadline_and_the_clock_alone_ends_it(self) -> None:
        self.fake.set(leader_status(token=7, valid_for_s=2))
        with self.sidecar.leading(refresh_s=0.1) as lead:
            first = lead.term.valid_until_monotonic
            self.fake.renew(30)
            deadline = time.monotonic() + PATIENCE_S
            while lead.term.valid_until_monotonic == first and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertGreater(lead.term.valid_until_monotonic, first + 20)
        # A sidecar that stops answering does not keep a term alive: the deadline ends it.
        self.fake.set(leader_status(token=7, valid_for_s=0.5))
        with self.sidecar.leading(refresh_s=0.1) as lead:
            self.fake.close()
            self.assertTrue(lead.ended.wait(PATIENCE_S))
            self.assertEqual(lead.reason, lease_sidecar_client._leading.DEADLINE)

    def test_a_pause_past_the_deadline_is_seen_at_the_next_check(self) -> None:
        self.fake.set(leader_status(token=7, valid_for_s=30))
        with self.sidecar.leading(refresh_s=5) as lead:
            # As if the process had been stopped past the deadline: the watcher had no chance to run.
            lead._term = lead.term.ended_at()
            with self.assertRaises(TermEnded):
                lead.check()

    def test_draining_signals_the_work_and_resigns_when_it_ends(self) -> None:
        with self.sidecar.leading(refresh_s=0.2) as lead:
            self.fake.set({**leader_status(token=7, version=3), "draining": True})
            self.assertTrue(lead.ended.wait(PATIENCE_S))
            self.assertTrue(lead.term.is_valid())  # still leading while it drains
        self.assertEqual(len(self.fake.resigns), 1)

    def test_decorator_waits_for_a_term_and_passes_it(self) -> None:
        self.fake.set(standby_status(1))
        seen: list[int] = []

        @self.sidecar.leading(refresh_s=0.2)
        def job() -> str:
            term = current_term()
            assert term is not None
            seen.append(term.fencing_token)
            return "done"

        threading.Timer(0.3, lambda: self.fake.set(leader_status(token=9, version=2))).start()
        self.assertEqual(job(), "done")
        self.assertEqual(seen, [9])

    def test_waiting_for_a_term_times_out(self) -> None:
        self.fake.set(standby_status(1))
        with self.assertRaises(TimeoutError):
            self.sidecar.wait_for_term(timeout_s=0.3)


class Asyncio(WithFake):
    def test_status_heartbeat_resign(self) -> None:
        async def scenario() -> None:
            sidecar = AsyncSidecar(self.fake.url)
            status = await sidecar.status()
            assert status is not None and status["fencing_token"] == 7
            self.assertEqual((await sidecar.term()).fencing_token, 7)  # type: ignore[union-attr]
            self.assertIsNotNone(await sidecar.heartbeat(schedule_count=2, next_due_task="x"))
            self.assertEqual(self.fake.heartbeats[-1], {"schedule_count": 2, "next_due_task": "x"})
            self.assertIsNotNone(await sidecar.resign(sit_out_s=0))
            self.assertEqual(self.fake.resigns, ["sit_out=0"])
            nobody = AsyncSidecar("http://127.0.0.1:1", request_timeout_s=0.5)
            self.assertIsNone(await nobody.status())
            self.assertIsNone(await nobody.heartbeat())

        asyncio.run(scenario())

    def test_the_event_stream_carries_leader_and_renewal(self) -> None:
        async def scenario() -> list[tuple[str, int]]:
            seen: list[tuple[str, int]] = []
            async for kind, status in AsyncSidecar(self.fake.url).events():
                seen.append((kind, status["version"]))
                if len(seen) == 1:
                    self.fake.renew(40)
                elif len(seen) == 2:
                    self.fake.set(standby_status(9))
                else:
                    return seen
            return seen

        self.assertEqual(asyncio.run(asyncio.wait_for(scenario(), PATIENCE_S)),
                         [("leader", 1), ("renewal", 1), ("leader", 9)])

    def test_the_task_is_cancelled_when_the_term_ends_and_leaves_as_term_ended(self) -> None:
        async def scenario() -> str:
            sidecar = AsyncSidecar(self.fake.url)
            try:
                async with sidecar.leading(refresh_s=0.2) as lead:
                    self.assertEqual(current_term(), lead.term)
                    asyncio.get_running_loop().call_later(0.2, self.fake.set, standby_status(2))
                    await asyncio.sleep(PATIENCE_S)
                    return "not cancelled"
            except TermEnded:
                return "ended"

        self.assertEqual(asyncio.run(scenario()), "ended")

    def test_renewal_events_move_the_deadline(self) -> None:
        self.fake.set(leader_status(token=7, valid_for_s=3))

        async def scenario() -> float:
            async with AsyncSidecar(self.fake.url).leading(refresh_s=30) as lead:
                first = lead.term.valid_until_monotonic
                await asyncio.sleep(0.3)  # the stream is connected
                self.fake.renew(60)
                while lead.term.valid_until_monotonic == first:  # noqa: ASYNC110  (a Term has no event)
                    await asyncio.sleep(0.05)
                return lead.term.valid_until_monotonic - first

        self.assertGreater(asyncio.run(asyncio.wait_for(scenario(), PATIENCE_S)), 50)


if __name__ == "__main__":
    unittest.main()
