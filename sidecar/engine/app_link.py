"""The app's link to the election: heartbeats, resigns and health probes, fed to the core.

A thin shell around `core.liveness.AppLiveness` (every rule lives there and in the Elector): it
stamps each observation with the clock, publishes, and wakes the elect loop so that a standby
whose app just came alive campaigns at once and a resigning leader releases at once. Whatever
else waits for a live app (keyed locks' acquisitions) subscribes with `on_alive`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from sidecar.core.clock import Clock
from sidecar.core.config import ConfigError
from sidecar.core.liveness import AppInfo, AppLiveness
from sidecar.engine.status import Snapshot, StatusBoard

log = logging.getLogger("lease_sidecar.engine.app_link")

PROBE_TIMEOUT_CAP_S = 2.0
"""A health probe's timeout: at most this, and never longer than the heartbeat interval."""


def probe_timeout_s(interval_s: float) -> float:
    return min(PROBE_TIMEOUT_CAP_S, interval_s)


def check_probe_ttl(ttl_s: float | None, interval_s: float, health_url: str) -> None:
    """Probes start every `interval_s` and a passing one counts when it answers, so two passes
    can be up to interval + probe timeout apart: a TTL not above that would demote a healthy app
    whose answers vary. Raises ConfigError (one line naming the flag)."""
    if not health_url or ttl_s is None:
        return
    timeout_s = probe_timeout_s(interval_s)
    if ttl_s <= interval_s + timeout_s:
        raise ConfigError("--app-heartbeat-ttl", f"must be greater than --heartbeat-interval plus the probe timeout "
                                                 f"with --app-health-url ({ttl_s:g}s <= {interval_s:g}s + "
                                                 f"{timeout_s:g}s): a healthy app's probes may be that far apart")


class AppLink:
    def __init__(self, liveness: AppLiveness, board: StatusBoard, clock: Clock, wake: Callable[[], None],
                 default_sit_out_s: float) -> None:
        self.liveness = liveness
        self.board = board
        self.clock = clock
        self._wake = wake
        self.default_sit_out_s = default_sit_out_s
        self._probe_failing = False
        self._alive_listeners: list[Callable[[], None]] = []

    def on_alive(self, listener: Callable[[], None]) -> None:
        """Call `listener` at every sign of life (a heartbeat, a passing probe), after the election's
        own wake: waiters that a dead app holds back decide again at once, not at their timeout."""
        self._alive_listeners.append(listener)

    def heartbeat(self, info: AppInfo | None = None) -> Snapshot:
        now = self.clock.now()
        self.liveness.beat(now.mono, now.wall, info)
        self._seen_alive()
        return self.board.snapshot()

    def _seen_alive(self) -> None:
        self._wake()
        for listener in self._alive_listeners:
            listener()

    def resign(self, sit_out_s: float | None = None) -> Snapshot:
        """Standby from this moment (the view consults the gate); the elect loop, woken, releases."""
        now = self.clock.now()
        sit_out = self.default_sit_out_s if sit_out_s is None else sit_out_s
        leading = self.board.snapshot()["is_leader"]
        self.liveness.resign(now.mono, sit_out)
        snapshot = self.board.snapshot()  # publishes standby before the loop can send the release
        self._wake()
        log.warning("resigned" if leading else "resign asked while not leading; sitting out",
                    extra={"event": "resign", "was_leader": leading, "sit_out_s": sit_out})
        return snapshot

    async def probe_forever(self, url: str, interval_s: float) -> None:
        """GET `url` every `interval_s`; a 2xx answer within the timeout counts as a heartbeat."""
        timeout = aiohttp.ClientTimeout(total=probe_timeout_s(interval_s))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await self.probe_at_fixed_rate(lambda: self._probe(session, url), interval_s)

    async def probe_at_fixed_rate(self, probe: Callable[[], Awaitable[tuple[bool, str | None]]], interval_s: float,
                                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Start a probe every `interval_s` by the monotonic clock, whatever each one takes (its
        timeout is at most the interval): sleeping a whole interval after each probe would space
        the passes interval + probe time apart, and a slow but healthy app would miss its TTL.
        A start that falls behind (a stalled loop) is skipped, never caught up in a burst."""
        next_start = self.clock.now().mono
        while True:
            ok, error = await probe()
            now = self.clock.now()
            self.liveness.probe(now.mono, now.wall, ok)
            if ok:
                self._seen_alive()
            if ok == self._probe_failing:  # log transitions only
                self._probe_failing = not ok
                log.warning("app health probe failing" if not ok else "app health probe passing",
                            extra={"event": "app_probe", "ok": ok, "error": error})
            next_start += interval_s
            if next_start <= now.mono:
                next_start += (now.mono - next_start) // interval_s * interval_s + interval_s
            await sleep(next_start - now.mono)

    @staticmethod
    async def _probe(session: aiohttp.ClientSession, url: str) -> tuple[bool, str | None]:
        try:
            async with session.get(url, allow_redirects=False) as response:
                await response.read()
                return 200 <= response.status <= 299, None if response.status < 300 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return False, repr(error)[:200]
