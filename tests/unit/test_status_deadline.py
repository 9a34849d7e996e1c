"""Issue 17 item 3: the app's deadline on the monotonic clock, and renewals pushed (fake clock)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.core.config import ElectionConfig
from sidecar.core.election import Elector, Moment
from sidecar.engine.heartbeat import BeatHeartbeat
from sidecar.engine.memory_lock import InMemoryLockBackend
from sidecar.engine.status import StatusBoard
from sidecar.publish import http_api
from sidecar.publish.openapi import OPENAPI

CONFIG = ElectionConfig(lease_ttl_s=10, renewal_interval_s=2, renew_deadline_s=6, heartbeat_interval_s=1,
                        heartbeat_ttl_s=3, failover_timeout_s=20)


class FakeClock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall_offset_s = 0.0

    def now(self) -> Moment:
        wall = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.mono + self.wall_offset_s)
        return Moment(self.mono, wall)


async def leading(clock: FakeClock, uid: str | None = "uid-1") -> tuple[BeatHeartbeat, StatusBoard]:
    backend = InMemoryLockBackend()
    elector = Elector("a", CONFIG)
    board = StatusBoard(elector, clock, backend.key, 3, lease_uid=lambda: uid)
    heartbeat = BeatHeartbeat(elector, backend, board, clock)
    await heartbeat.tick()
    clock.mono += CONFIG.lease_ttl_s  # no Lease yet: created one TTL after it was first seen absent
    assert await heartbeat.try_become_leader()
    return heartbeat, board


async def test_a_leader_publishes_its_monotonic_deadline_and_the_time_left() -> None:
    clock = FakeClock()
    heartbeat, board = await leading(clock)
    body = board.snapshot()
    assert body["valid_until_monotonic"] == heartbeat.elector.valid_until_mono == clock.mono + 6
    assert body["valid_for_seconds"] == 6
    assert body["lease_uid"] == "uid-1" and body["draining"] is False
    clock.mono += 2.5
    assert board.snapshot()["valid_for_seconds"] == 3.5
    # A wall clock stepped back an hour moves the wall deadline, never the monotonic one.
    clock.wall_offset_s = -3600
    stepped = board.snapshot()
    assert stepped["valid_until_monotonic"] == body["valid_until_monotonic"]
    assert stepped["valid_until"] != body["valid_until"]


async def test_a_standby_has_no_deadline() -> None:
    clock = FakeClock()
    elector = Elector("b", CONFIG)
    board = StatusBoard(elector, clock, "default/test", 3)
    body = board.snapshot()
    assert body["valid_until_monotonic"] is None and body["valid_for_seconds"] is None
    assert body["lease_uid"] is None and body["draining"] is False


async def test_a_renewal_moves_the_deadline_without_a_new_version_and_is_heard() -> None:
    clock = FakeClock()
    heartbeat, board = await leading(clock)
    heard: list[dict[str, Any]] = []
    board.subscribe(heard.append, renewals=True)
    before = board.snapshot()
    clock.mono += CONFIG.renewal_interval_s
    assert await heartbeat.renew_lease()
    after = board.snapshot()
    assert after["version"] == before["version"]
    assert after["valid_until_monotonic"] == before["valid_until_monotonic"] + CONFIG.renewal_interval_s
    assert heard and heard[-1]["valid_until_monotonic"] == after["valid_until_monotonic"]
    assert board.renewals == 1


async def read_event(response: Any) -> tuple[str, dict[str, Any]]:
    kind, data = "", None
    while data is None:
        line = (await response.content.readline()).decode()
        if line.startswith("event: "):
            kind = line[7:].strip()
        elif line.startswith("data: "):
            data = json.loads(line[6:])
    return kind, data


async def test_the_event_stream_pushes_each_renewal_as_its_own_event() -> None:
    clock = FakeClock()
    heartbeat, board = await leading(clock)
    app: web.Application = http_api.build_app(board, lambda: True)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/leader/events")
        kind, first = await read_event(response)
        assert kind == "leader" and first["is_leader"] is True
        for _ in range(2):
            clock.mono += CONFIG.renewal_interval_s
            assert await heartbeat.renew_lease()
            kind, renewed = await asyncio.wait_for(read_event(response), 5)
            assert kind == "renewal"
            assert renewed["version"] == first["version"]
            assert renewed["valid_until_monotonic"] == heartbeat.elector.valid_until_mono
        heartbeat.elector.close(clock.now())
        heartbeat._publish()
        kind, ended = await asyncio.wait_for(read_event(response), 5)
        assert kind == "leader" and ended["is_leader"] is False and ended["valid_until_monotonic"] is None
        response.close()


def test_openapi_describes_the_new_fields() -> None:
    leader = OPENAPI["paths"]["/leader"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    for name in ("valid_until_monotonic", "valid_for_seconds", "lease_uid", "draining"):
        assert name in leader["required"] and name in leader["properties"]


async def test_the_client_helpers_fence_by_the_monotonic_deadline() -> None:
    from sidecar import client

    clock = FakeClock()
    _, board = await leading(clock)
    body = board.snapshot()
    clock.wall_offset_s = -3600  # the client never looks at the wall clock
    assert client.remaining_s(body, now_monotonic=clock.mono) == 6
    assert client.still_valid(body, now_monotonic=clock.mono + 5.9)
    assert not client.still_valid(body, now_monotonic=clock.mono + 6)
    assert not client.still_valid({**body, "is_leader": False}, now_monotonic=clock.mono)
    assert not client.still_valid({**body, "valid_until_monotonic": None}, now_monotonic=clock.mono)
