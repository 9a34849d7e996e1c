"""The member record follows the app: rewritten as soon as the app's liveness changes, and what
readiness waits for (`shown_alive`). Real asyncio, fake clock; the heartbeat interval is set far
longer than any wait here, so only the change itself can cause the second write."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from sidecar.core.config import ElectionConfig
from sidecar.core.election import Elector
from sidecar.core.liveness import AppLiveness
from sidecar.core.members import MemberRecord
from sidecar.engine.members import MemberPresence
from sidecar.engine.status import StatusBoard
from tests.unit.test_heartbeat import FakeClock

SLOW = ElectionConfig(lease_ttl_s=10, renewal_interval_s=2, renew_deadline_s=6, heartbeat_interval_s=300,
                      heartbeat_ttl_s=900, failover_timeout_s=1000)


class RecordingStore:
    def __init__(self) -> None:
        self.puts: list[MemberRecord] = []

    async def list(self, timeout_s: float) -> tuple[dict[str, tuple[MemberRecord, str]], str]:
        return {}, "1"

    async def put(self, name: str, record: MemberRecord, version: str | None, timeout_s: float) -> str:
        self.puts.append(record)
        return str(len(self.puts) + 1)

    async def delete(self, name: str, version: str | None, timeout_s: float) -> None:
        return None

    async def watch(self, version: str, idle_timeout_s: float) -> AsyncIterator[tuple[str, MemberRecord | None, str]]:
        await asyncio.sleep(idle_timeout_s)
        return
        yield  # an async generator that yields nothing


async def until(predicate: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Lets the loop run until `predicate()`; `limit_s` only bounds a broken build (far below the
    300 s interval, so a write seen here was caused by the change, not by the timer)."""
    for _ in range(int(limit_s / 0.001)):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the member record was not written")


async def test_the_record_is_rewritten_as_soon_as_the_app_comes_alive_and_goes() -> None:
    clock = FakeClock()
    app = AppLiveness(ttl_s=SLOW.heartbeat_ttl_s)
    board = StatusBoard(Elector("a", SLOW), clock, "ns/work", 3, app)
    store = RecordingStore()
    presence = MemberPresence(store, board, clock, "a", "work", SLOW)
    renewing = asyncio.create_task(presence.renew_forever())
    try:
        await until(lambda: len(store.puts) == 1)
        assert store.puts[0].app_alive is False and presence.shown_alive is False

        app.beat(clock.mono, clock.now().wall)
        board.snapshot()  # what the heartbeat handler does: publish, which tells the subscribers
        await until(lambda: len(store.puts) == 2)
        assert store.puts[1].app_alive is True and presence.shown_alive is True

        clock.advance(SLOW.heartbeat_ttl_s + 1)  # the app fell silent
        board.snapshot()
        await until(lambda: len(store.puts) == 3)
        assert store.puts[2].app_alive is False
        assert presence.shown_alive is True  # readiness, once reached, does not follow the app
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)


def test_each_change_of_the_apps_liveness_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    app = AppLiveness(ttl_s=5)
    board = StatusBoard(Elector("a", SLOW), clock, "ns/work", 3, app)
    with caplog.at_level(logging.INFO, logger="lease_sidecar.app"):
        board.snapshot()
        board.snapshot()
        app.beat(clock.mono, clock.now().wall)
        board.snapshot()
        board.snapshot()
        clock.advance(6)
        board.snapshot()
    changes = [(record.levelname, record.alive, record.heartbeats) for record in caplog.records
               if getattr(record, "event", None) == "app_liveness"]
    assert changes == [("WARNING", False, 0), ("INFO", True, 1), ("WARNING", False, 1)]


def test_an_app_that_is_not_consulted_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    board = StatusBoard(Elector("a", SLOW), FakeClock(), "ns/work", 3, AppLiveness())
    with caplog.at_level(logging.INFO, logger="lease_sidecar.app"):
        board.snapshot()
    assert not [record for record in caplog.records if getattr(record, "event", None) == "app_liveness"]
